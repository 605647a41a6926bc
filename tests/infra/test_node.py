"""infra.node: whether a node's process is running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rankwatch.infra import node as nodes


def test_a_child_just_started_is_running_whatever_its_cmdline_says(tmp_path: Path) -> None:
    # The JVM's /proc cmdline can read empty (or not yet name the properties file) just after
    # launch on a loaded machine: our own child is judged by its Popen, not by /proc.
    spec = nodes.NodeSpec(node_id=1, port=1, controller_port=2, directory=tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    nodes._CHILDREN[child.pid] = child
    try:
        assert str(spec.properties_file) not in Path(f"/proc/{child.pid}/cmdline").read_text()
        assert nodes.is_running(child.pid, spec)
        child.kill()
        child.wait()
        assert not nodes.is_running(child.pid, spec)
    finally:
        child.kill()
        child.wait()
        nodes._CHILDREN.pop(child.pid, None)


def test_a_process_that_is_not_ours_must_be_the_nodes_jvm(tmp_path: Path) -> None:
    spec = nodes.NodeSpec(node_id=1, port=1, controller_port=2, directory=tmp_path)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not nodes.is_running(stranger.pid, spec)  # alive, but not this node's
        assert not nodes.is_running(None, spec)
    finally:
        stranger.kill()
        stranger.wait()
