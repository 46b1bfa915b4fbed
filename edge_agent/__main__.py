"""``python -m edge_agent --config station.yaml``: the agent without the ``slimspect`` command."""

from edge_agent.cli import agent

if __name__ == "__main__":
    agent(prog_name="python -m edge_agent")
