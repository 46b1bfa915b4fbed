"""Schemathesis against the API's own OpenAPI document, on a real server over data written
through the aggregator, with an operator key: whatever it generates (valid or not), the
API answers as documented and never with a 5xx (so it gets a model store, and every
backend is up). Bounded to stay well under a minute."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from aggregator_harness import new_namespace, run_async
from api_harness import LiveApi, make_dataset, published_store, send_through_aggregator
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from slimspect.settings import StoreSettings

pytestmark = pytest.mark.timeout(180)
EXAMPLES = 20
# "Schema-valid data is accepted" cannot hold where parameters constrain each other, which
# OpenAPI cannot say: from <= to, share OR stations, a stats window of at most N hours, a
# time string that parses. Every other check runs, the 500 check first of all.
EXCLUDED = [positive_data_acceptance]


@pytest.fixture(scope="module")
def live(
    module_scratch_url: str, s3_server: StoreSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    ns = new_namespace()
    data = make_dataset(ns, n_events=300, seed=2)
    run_async(send_through_aggregator(module_scratch_url, ns, data.events))
    store = published_store(s3_server, tmp_path_factory.mktemp("models"))
    with LiveApi(module_scratch_url, store=store) as api:
        yield api


def _operations(live: LiveApi) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{live.base}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


# Schemathesis' pytest plugin does not load under this pytest, so the test drives it
# itself: one Hypothesis run per operation and generation mode.
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_api_answers_as_documented(live: LiveApi, mode: schemathesis.GenerationMode) -> None:
    headers = {"Authorization": f"Bearer {live.operator}"}
    operations = _operations(live)
    assert len(operations) >= 15

    for operation in operations:
        has_input = any(
            len(p) for p in (operation.path_parameters, operation.query, operation.body)
        )
        if mode == schemathesis.GenerationMode.NEGATIVE and not has_input:
            continue  # nothing to get wrong (the auth headers are ours)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, excluded_checks=EXCLUDED, timeout=30)

        check()
