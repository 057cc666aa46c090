"""Runs and steps through the official `letta-client`: every turn is a run."""

from letta_client import NotFoundError
import pytest


def _agent(client, name):
    return client.agents.create(
        name=name,
        model="openai-proxy/fake-gpt",
        memory_blocks=[{"label": "human", "value": "Name: Ana."}],
    )


def _say(client, agent_id, text):
    return client.agents.messages.create(agent_id=agent_id, messages=[{"role": "user", "content": text}])


def test_each_turn_is_a_run_with_messages_steps_and_usage(client):
    agent = _agent(client, "py-runs")
    reply = _say(client, agent.id, '/call archival_memory_insert {"content": "tea at five"}')
    run_id = reply.messages[0].run_id
    assert all(message.run_id == run_id for message in reply.messages)

    run = client.runs.retrieve(run_id)
    assert (run.status, run.stop_reason, run.background, run.agent_id) == (
        "completed",
        "end_turn",
        False,
        agent.id,
    )
    messages = list(client.runs.messages.list(run_id, limit=2))
    assert messages[0].message_type == "user_message"
    assert [m.id for m in messages[1:]] == [m.id for m in reply.messages]

    steps = list(client.runs.steps.list(run_id, order="asc", limit=1))
    assert len(steps) == 2
    assert {step.run_id for step in steps} == {run_id}
    assert [step.id for step in steps] == [reply.messages[0].step_id, reply.messages[-1].step_id]
    usage = client.runs.usage.retrieve(run_id)
    assert usage.total_tokens == sum(step.total_tokens for step in steps) == reply.usage.total_tokens
    assert usage.total_tokens > 0

    with pytest.raises(NotFoundError):
        client.runs.retrieve("run-00000000-0000-4000-8000-000000000000")


def test_runs_list_pages_to_the_end_with_filters(client):
    agent = _agent(client, "py-run-pages")
    made = [_say(client, agent.id, f"turn {n}").messages[0].run_id for n in range(7)]
    background = client.agents.messages.create_async(
        agent_id=agent.id, messages=[{"role": "user", "content": "later"}]
    )

    newest_first = [run.id for run in client.runs.list(agent_id=agent.id, limit=3)]
    assert newest_first[0] == background.id
    assert newest_first[1:] == list(reversed(made))
    oldest_first = [run.id for run in client.runs.list(agent_id=agent.id, order="asc", limit=2)]
    assert oldest_first == list(reversed(newest_first))

    synchronous = [run.id for run in client.runs.list(agent_id=agent.id, background=False, limit=4)]
    assert synchronous == list(reversed(made))
    assert list(client.runs.list(agent_id=agent.id, statuses=["failed"])) == []
    # Every agent's runs, through the pager: ours in order among them.
    everything = [run.id for run in client.runs.list(order="asc", limit=5)]
    assert [run_id for run_id in everything if run_id in made] == made


def test_a_run_stream_resumes_where_the_client_left_off(client):
    agent = _agent(client, "py-run-stream")
    reply = _say(client, agent.id, '/call archival_memory_insert {"content": "the key is under the mat"}')
    run_id = reply.messages[0].run_id
    events = list(client.runs.messages.stream(run_id))
    kinds = [event.message_type for event in events]
    assert kinds[0] == "ping"
    assert kinds[1:] == [m.message_type for m in reply.messages] + ["stop_reason", "usage_statistics"]
    numbered = [event for event in events if event.message_type != "ping"]
    cut = 2
    resumed = list(client.runs.messages.stream(run_id, starting_after=cut, include_pings=False))
    assert [event.message_type for event in resumed] == [event.message_type for event in numbered[cut:]]
    assert resumed[-1].message_type == "usage_statistics"
    assert resumed[-1].total_tokens == reply.usage.total_tokens


def test_a_message_retried_with_its_otid_runs_once(client):
    agent = _agent(client, "py-run-otid")
    message = {"role": "user", "content": "only once, please", "otid": "4c0b2f65-retry"}
    first = client.agents.messages.create(agent_id=agent.id, messages=[message])
    retried = client.agents.messages.create(agent_id=agent.id, messages=[message])
    assert [m.id for m in retried.messages] == [m.id for m in first.messages]
    assert retried.usage.run_ids == first.usage.run_ids
    stored = [m for m in client.agents.messages.list(agent.id) if m.message_type == "user_message"]
    assert [m.content for m in stored] == ["only once, please"]
    assert len(list(client.runs.list(agent_id=agent.id))) == 1


def test_steps_are_found_by_id_listed_to_the_end_and_take_feedback(client):
    agent = _agent(client, "py-steps")
    replies = [_say(client, agent.id, f"turn {n}") for n in range(5)]
    made = [reply.messages[-1].step_id for reply in replies]

    listed = [step.id for step in client.steps.list(agent_id=agent.id, order="asc", limit=2)]
    assert listed == made
    newest_first = [step.id for step in client.steps.list(agent_id=agent.id, limit=3)]
    assert newest_first == list(reversed(made))

    step = client.steps.retrieve(made[1])
    assert (step.id, step.agent_id, step.run_id) == (made[1], agent.id, replies[1].messages[0].run_id)
    assert step.model_handle == "openai-proxy/fake-gpt"
    metrics = client.steps.metrics.retrieve(made[1])
    assert metrics.run_id == step.run_id and metrics.step_ns >= metrics.llm_request_ns > 0
    assert client.steps.trace.retrieve(made[1]) is None
    messages = list(client.steps.messages.list(made[1]))
    assert [m.id for m in messages if m.message_type != "user_message"] == [m.id for m in replies[1].messages]

    updated = client.steps.feedback.create(made[1], feedback="negative", tags=["slow"])
    assert (updated.feedback, updated.tags) == ("negative", ["slow"])
    assert [s.id for s in client.steps.list(agent_id=agent.id, feedback="negative")] == [made[1]]
    assert [s.id for s in client.steps.list(agent_id=agent.id, tags=["slow"])] == [made[1]]

    with pytest.raises(NotFoundError):
        client.steps.retrieve("step-00000000-0000-4000-8000-000000000000")
