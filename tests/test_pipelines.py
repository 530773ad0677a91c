"""The pipeline engine and the built-in processors, without HTTP."""
import pytest
import pytest_twisted
from twisted.internet import defer, task

from pipedingest.config.loader import load_config
from pipedingest.service import build_daemon
from tests.conftest import write_config


def build(tmp_path, text, reactor=None):
    return build_daemon(load_config(write_config(tmp_path, text)), reactor)


def run(daemon, name, baton):
    """Run a pipeline whose steps are all synchronous; return its result."""
    results = []
    daemon.pipelines[name](baton).addBoth(results.append)
    (result,) = results
    if isinstance(result, Exception) or hasattr(result, "raiseException"):
        result.raiseException()
    return result


def test_eval_lambda_namespace_and_paths(tmp_path):
    daemon = build(tmp_path, """\
        pipelines:
          p:
            - eval-lambda:
                input_path: data.numbers
                output_path: total
                lambda: "numbers: sum(numbers)"
            - eval-lambda:
                namespace: {sqrt: math.sqrt, offset: 1}
                output_path: root
                lambda: "baton: sqrt(baton['total']) + offset"
        """)
    assert run(daemon, "p", {"data": {"numbers": [4, 5]}}) == {"data": {"numbers": [4, 5]}, "total": 9, "root": 4.0}


def test_output_path_defaults_to_input_path_and_null_discards(tmp_path):
    daemon = build(tmp_path, """\
        pipelines:
          p:
            - eval-lambda: {input_path: x, lambda: "x: x * 2"}
            - eval-lambda: {input_path: x, output_path: null, lambda: "x: 'ignored'"}
        """)
    assert run(daemon, "p", {"x": 21}) == {"x": 42}


def test_exec_code_sees_input_and_baton(tmp_path):
    daemon = build(tmp_path, """\
        pipelines:
          p:
            - exec-code:
                input_path: items
                output_path: summary
                code: |
                    total = sum(input)
                    return dict(total=total, label=baton['label'])
        """)
    assert run(daemon, "p", {"items": [1, 2], "label": "L"})["summary"] == {"total": 3, "label": "L"}


def test_set_value_copies_and_remap_skips_absent_sources(tmp_path):
    daemon = build(tmp_path, """\
        pipelines:
          p:
            - set-value: {path: target.list, value: [1]}
            - remap:
                mapping: {a: target.a, missing: target.missing}
        """)
    first = run(daemon, "p", {"a": "A"})
    first["target"]["list"].append(2)
    second = run(daemon, "p", {"a": "B"})
    assert second == {"a": "B", "target": {"list": [1], "a": "B"}}


def test_stop_with_decider_ends_the_pipeline(tmp_path):
    daemon = build(tmp_path, """\
        pipelines:
          p:
            - stop:
                decider: "baton: baton['n'] < 0"
            - set-value: {path: reached, value: true}
        """)
    assert run(daemon, "p", {"n": -1}) == {"n": -1}
    assert run(daemon, "p", {"n": 1}) == {"n": 1, "reached": True}


def test_fetch_context_is_shared_between_runs(tmp_path):
    daemon = build(tmp_path, """\
        contexts:
          pending: {}
        pipelines:
          add:
            - fetch-context: {context: pending}
            - exec-code:
                code: |
                    baton['pending'][baton['key']] = baton['value']
                    return baton
        """)
    run(daemon, "add", {"key": "a", "value": 1})
    run(daemon, "add", {"key": "b", "value": 2})
    assert daemon.runtime.get("context.pending") == {"a": 1, "b": 2}


def test_relative_pipeline_names(tmp_path):
    daemon = build(tmp_path, """\
        pipelines:
          top:
            - set-value: {path: where, value: top}
          web:
            sibling:
              - set-value: {path: where, value: sibling}
            compute:
              - run-pipeline: {pipeline: .sibling, input_path: a}
              - run-pipeline: {pipeline: ..top, input_path: b}
              - run-pipeline: {pipeline: web.sibling, input_path: c}
        """)
    result = run(daemon, "web.compute", {"a": {}, "b": {}, "c": {}})
    assert result == {"a": {"where": "sibling"}, "b": {"where": "top"}, "c": {"where": "sibling"}}


def test_relative_name_climbing_too_far_is_a_config_error(tmp_path):
    from pipedingest.config.errors import ConfigErrors

    with pytest.raises(ConfigErrors) as caught:
        build(tmp_path, "pipelines:\n  p:\n    - run-pipeline: {pipeline: ...x}\n")
    assert "climbs above the top" in caught.value.render()


def test_for_each_collects_results_and_tolerates_failures(tmp_path):
    daemon = build(tmp_path, """\
        pipelines:
          square:
            - eval-lambda: {lambda: "n: 1 // n * n * n if n else 1 // n"}
          tolerant:
            - for-each: {input_path: numbers, output_path: squares, pipeline: square}
          strict:
            - for-each: {input_path: numbers, output_path: squares, pipeline: square, fail_on_error: true}
        """)
    assert run(daemon, "tolerant", {"numbers": [1, 0, 1]})["squares"] == [1, None, 1]
    with pytest.raises(ZeroDivisionError):
        run(daemon, "strict", {"numbers": [1, 0, 1]})


def test_json_round_trip_and_invalid_json(tmp_path):
    from pipedingest.engine.errors import InvalidInput

    daemon = build(tmp_path, """\
        pipelines:
          p:
            - encode-json: {input_path: data, output_path: text}
            - decode-json: {input_path: text, output_path: back}
          bad:
            - decode-json: {input_path: text}
        """)
    result = run(daemon, "p", {"data": {"é": [1, None]}})
    assert result["text"] == '{"é":[1,null]}'
    assert result["back"] == {"é": [1, None]}
    with pytest.raises(InvalidInput):
        run(daemon, "bad", {"text": "{nope"})


def test_error_consumers_get_the_error_and_handle_it(tmp_path):
    daemon = build(tmp_path, """\
        pipelines:
          p:
            chained_consumers:
              - eval-lambda: {input_path: n, lambda: "n: 1 / n"}
            chained_error_consumers:
              - eval-lambda: {input_path: error, output_path: handled, lambda: "e: e['type']"}
          by-name:
            steps:
              - eval-lambda: {input_path: n, lambda: "n: 1 / n"}
            on_error: .handler
          handler:
            - set-value: {path: handled, value: by-name}
        """)
    result = run(daemon, "p", {"n": 0})
    assert result["handled"] == "ZeroDivisionError"
    assert "p: eval-lambda at" in result["error"]["step"]
    assert run(daemon, "by-name", {"n": 0})["handled"] == "by-name"
    assert run(daemon, "p", {"n": 4}) == {"n": 0.25}


def test_a_failure_without_error_consumers_propagates_with_its_step(tmp_path):
    daemon = build(tmp_path, "pipelines:\n  p:\n    - eval-lambda: {lambda: \"x: x['missing']\"}\n")
    with pytest.raises(KeyError) as caught:
        run(daemon, "p", {})
    assert any("in pipeline 'p', step eval-lambda at conf.yaml:3:7" in note or "conf.yaml:3:7" in note
               for note in caught.value.__notes__)


def test_cancelling_a_pipeline_cancels_the_step_it_waits_on(tmp_path):
    daemon = build(tmp_path, """\
        pipelines:
          p:
            chained_consumers:
              - eval-lambda: {input_path: wait, lambda: "wait: wait()"}
              - set-value: {path: after, value: true}
            chained_error_consumers:
              - set-value: {path: handled, value: true}
        """)
    cancelled = []
    waiting = defer.Deferred(cancelled.append)
    baton = {"wait": lambda: waiting}
    running = daemon.pipelines["p"](baton)
    running.cancel()
    assert cancelled == [waiting]
    assert "after" not in baton and "handled" not in baton
    failures = []
    running.addErrback(failures.append)
    assert failures[0].check(defer.CancelledError)


def test_ticks_run_their_pipeline_on_the_clock(tmp_path):
    clock = task.Clock()
    daemon = build(tmp_path, """\
        contexts: {counter: {n: 0}}
        ticks:
          interval:
            count: {interval: 2.5, processor: pipeline.count}
            broken: {interval: 1, processor: pipeline.broken}
        pipelines:
          count:
            - fetch-context: {context: counter}
            - exec-code:
                code: |
                    baton['counter']['n'] += 1
                    baton['counter']['last'] = baton['time']
                    return baton
          broken:
            - eval-lambda: {lambda: "b: 1 / 0"}
        """, reactor=clock)
    daemon.startService()
    counter = daemon.runtime.get("context.counter")
    assert counter["n"] == 0
    for _ in range(5):
        clock.advance(1)
    assert counter == {"n": 2, "last": 5.0}
    broken = daemon.runtime.get("tick.broken")
    assert broken.runs == 5 and broken.looping, "a failing tick keeps ticking"
    daemon.stopService()
    clock.advance(10)
    assert counter["n"] == 2


@pytest_twisted.ensureDeferred
async def test_startup_and_shutdown_events_run(tmp_path):
    daemon = build(tmp_path, """\
        contexts: {log: []}
        system-events:
          startup: {hello: pipeline.record}
          shutdown: {bye: pipeline.record}
        pipelines:
          record:
            - fetch-context: {context: log}
            - exec-code:
                code: |
                    baton['log'].append((baton['event'], baton['name']))
                    return baton
        """)
    daemon.startService()
    await daemon.started
    assert daemon.runtime.get("context.log") == [("startup", "hello")]
    await daemon.stopService()
    assert daemon.runtime.get("context.log") == [("startup", "hello"), ("shutdown", "bye")]


def test_processors_from_a_plugin_bundle(tmp_path):
    daemon = build(tmp_path, """\
        plugins:
          bundles:
            demo: [bundle_demo]
        pipelines:
          p:
            - shout: {input_path: text, suffix: "!!"}
        """)
    assert daemon.runtime.processors.origins["shout"] == "bundle 'demo'"
    assert run(daemon, "p", {"text": "hello"}) == {"text": "HELLO!!"}


def test_stopping_a_periodic_service_waits_for_the_call_in_progress():
    from pipedingest.periodic import PeriodicService

    class Slow(PeriodicService):
        def __init__(self, clock):
            super().__init__(5, clock)
            self.running_call = None

        def run_once(self):
            self.running_call = defer.Deferred()
            return self.running_call

    clock = task.Clock()
    service = Slow(clock)
    service.startService()
    assert service.calls == 0  # the first call comes after one interval
    clock.advance(5)
    assert service.calls == 1
    stopped = service.stopService()
    assert not stopped.called, "stopped while its call was still running"
    service.running_call.callback(None)
    assert stopped.called
    clock.advance(50)
    assert service.calls == 1 and clock.getDelayedCalls() == []
