"""errors.py: every error has its own code and a known status; codes sent by the runner come back as classes."""

from __future__ import annotations

import re

import pytest

from offload import errors
from offload.errors import (
    BackendUnusable,
    ModelNotFound,
    OffloadError,
    OutOfMemory,
    RunnerStartFailed,
    from_code,
)


def all_errors() -> list[type[OffloadError]]:
    """The tree declared in offload/errors.py (other modules' private adapters, e.g. the API's, are not part of it,
    and whether they are imported yet depends on test order)."""
    found: list[type[OffloadError]] = []
    todo: list[type[OffloadError]] = [OffloadError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == errors.__name__:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__name__)


ERRORS = all_errors()


def test_the_tree_is_not_empty() -> None:
    # Guards the parametrized tests below against silently running over nothing.
    assert len(ERRORS) >= 19
    assert errors.ModelNotFound in ERRORS


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in ERRORS]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_status_is_known(cls: type[OffloadError]) -> None:
    assert cls.status in {400, 401, 403, 404, 409, 413, 500, 502, 503, 507}
    assert re.fullmatch(r"[a-z_]+", cls.code)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_from_code_round_trips(cls: type[OffloadError]) -> None:
    error = from_code(cls.code, "it went wrong")
    assert type(error) is cls
    assert error.message == "it went wrong"
    assert str(error) == "it went wrong"
    assert error.status == cls.status
    assert error.param is None


@pytest.mark.parametrize("code", ["no_such_code", "", "MODEL_NOT_FOUND"])
def test_unknown_code_is_plain_offload_error(code: str) -> None:
    error = from_code(code, "boom")
    assert type(error) is OffloadError
    assert error.message == "boom"
    assert error.status == 500


def test_model_not_found_message() -> None:
    error = ModelNotFound("gemma3:270m")
    assert error.message == 'model "gemma3:270m" not found, try pulling it first'
    assert str(error) == error.message
    assert error.name == "gemma3:270m"
    assert error.param == "model"
    assert (error.status, error.code) == (404, "model_not_found")


def test_docstring_tree_matches_the_classes() -> None:
    # The module docstring is the documented map of status and code; it must not drift from the classes.
    assert errors.__doc__ is not None
    documented = set(re.findall(r"(\w+)\s+(\d{3}) (\w+)$", errors.__doc__, flags=re.MULTILINE))
    actual = {(cls.__name__, str(cls.status), cls.code) for cls in ERRORS}
    assert documented == actual


def test_out_of_memory_carries_device_and_size() -> None:
    error = OutOfMemory("no room", device="CUDA0", requested=4617387008)
    assert (error.message, error.device, error.requested) == ("no room", "CUDA0", 4617387008)
    assert (error.status, error.code) == (500, "out_of_memory")
    # A failed start, so whoever handles those handles this; not BackendUnusable, whose handler tries another backend.
    assert isinstance(error, RunnerStartFailed)
    assert not isinstance(error, BackendUnusable)


def test_out_of_memory_from_code_has_no_numbers() -> None:
    # from_code carries the message only; the attributes still exist, as None.
    error = from_code("out_of_memory", "no room")
    assert isinstance(error, OutOfMemory)
    assert (error.device, error.requested) == (None, None)
    assert OutOfMemory("no room").device is None
