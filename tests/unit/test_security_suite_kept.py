"""The security suite must not be deleted or thinned (issue: security and reliability). Each case of the issue's
list is pinned to the tests that show it; removing or renaming one fails here, on purpose. Add to this table when
you add a case; never remove a line without replacing its test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parent.parent / "security"

CASES: dict[str, list[str]] = {
    "absurd counts, huge strings, offsets past EOF, bad dims/alignment, type confusion": [
        "test_gguf_reader.py::test_malformed_file_is_refused",
        "test_gguf_reader.py::test_bleeding_llama_on_a_large_file",
        "test_gguf_reader.py::test_memory_is_charged_before_it_is_allocated",
        "test_gguf_api.py::test_create_from_a_malformed_blob_is_a_clean_400",
        "test_gguf_blackbox.py::test_real_server_refuses_a_malformed_gguf_and_keeps_serving",
    ],
    "GGUF fuzz target with its corpus": ["test_gguf_fuzz.py::test_reader_returns_metadata_or_its_own_error"],
    "bad digests": [
        "test_names_and_paths.py::test_bad_digests_on_the_blob_endpoints",
        "test_names_and_paths.py::test_bad_digests_in_create",
    ],
    "bad model names": ["test_names_and_paths.py::test_bad_model_names_on_every_endpoint"],
    "symlinks and .. in imported paths": [
        "test_names_and_paths.py::test_every_path_in_create_gets_the_same_answer",
        "test_names_and_paths.py::test_a_blob_symlinked_out_of_the_store_is_not_followed",
    ],
    "/dev/random, FIFOs, unreadable paths: no existence oracle": [
        "test_names_and_paths.py::test_a_missing_file_and_a_fifo_at_the_same_path_answer_byte_for_byte_alike",
    ],
    "template code execution": ["test_templates_http.py::test_template_escapes_execute_nothing"],
    "template DoS": ["test_templates_http.py::test_template_dos_ends_fast_and_small"],
    "oversized prompt and body": [
        "test_request_limits.py::test_a_body_over_the_limit_is_413_in_each_dialect",
        "test_blackbox_http.py::test_a_prompt_longer_than_the_context_is_context_length_exceeded",
    ],
    "bad numeric options": [
        "test_request_limits.py::test_bad_ollama_options_are_400_naming_the_option",
        "test_request_limits.py::test_bad_openai_fields_are_400_naming_the_field",
    ],
    "invalid JSON schema": [
        "test_request_limits.py::test_bad_schemas_are_400_in_each_dialect",
        "test_blackbox_http.py::test_a_schema_no_grammar_can_express_is_400",
    ],
    "lone surrogates and split emoji": [
        "test_request_limits.py::test_lone_surrogates_become_replacement_characters",
        "test_request_limits.py::test_an_emoji_split_across_messages_is_two_replacement_characters",
    ],
    "disconnect during prefill and mid-stream": [
        "test_faults.py::test_a_client_gone_during_the_prompt_stops_its_evaluation",
        "test_faults.py::test_a_client_gone_mid_stream_stops_its_generation",
    ],
    "100 concurrent streams with a small queue": ["test_faults.py::test_every_stream_of_a_burst_ends_served_or_503"],
    "/health failing when the runner is wedged or dead": [
        "test_faults.py::test_health_fails_while_the_runner_is_stopped",
        "test_faults.py::test_health_fails_while_a_dead_runner_is_not_replaced",
    ],
    "deleted model file": ["test_faults_store.py::test_model_file_changed_while_loaded"],
    "disk full": ["test_faults_disk.py::test_a_pull_onto_a_full_disk_fails_clearly_and_leaves_nothing"],
    "shutdown": ["test_faults_shutdown.py::test_sigterm_finishes_or_ends_streams_stops_runners_and_leaves_no_orphan"],
    "Host/Origin checks": [
        "test_http_access.py::test_other_host_names_are_403_while_bound_to_loopback",
        "test_http_access.py::test_foreign_origins_are_403_and_change_nothing",
        "test_blackbox_http.py::test_a_rebound_host_name_is_403",
    ],
    "API key on every route": [
        "test_http_access.py::test_every_route_but_root_and_health_needs_the_key",
        "test_blackbox_http.py::test_openai_client_needs_the_key",
    ],
}


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_case_of_the_security_issue_keeps_its_tests(case: str) -> None:
    for ref in CASES[case]:
        file_name, test_name = ref.split("::")
        path = SUITE / file_name
        assert path.is_file(), f"{case}: tests/security/{file_name} is gone"
        assert test_name in _tests_in(path), f"{case}: {ref} is gone"


def test_the_fuzz_corpus_is_kept() -> None:
    assert len(list((SUITE / "corpus").iterdir())) >= 80
