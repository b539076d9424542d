"""system/threads.py: the CPUs this process may use (affinity, cgroup quota), torch's pool set
and put back, OpenMP told to yield — checked against files and settings written here."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from cityseg_deploy.system import threads


def test_cgroup_v2_and_v1_quotas(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(v1) == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(v1) is None
    assert threads.cgroup_cpu_limit(tmp_path / "none") is None


def test_available_cpus_follow_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(threads, "_affinity", lambda: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root=None: None)
    assert threads.available_cpus() == 6
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root=None: 2.5)
    assert threads.available_cpus() == 3  # a 2.5-CPU quota: 3 threads, not the host's count
    # one thread per physical core, capped by the quota: 6 cores -> 3 (the quota), 2 cores -> 2
    monkeypatch.setattr(threads, "_physical_cores", lambda cpus: 6)
    assert threads.default_threads() == 3
    monkeypatch.setattr(threads, "_physical_cores", lambda cpus: 2)
    assert threads.default_threads() == 2


def test_torch_threads_are_put_back():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with threads.torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with threads.torch_threads(None):
        assert torch.get_num_threads() == before


def test_runner_holds_torch_threads_until_closed(tmp_path):
    from cityseg_deploy import runtime
    from cityseg_deploy.models.checkpoint import ModelMeta, save_checkpoint
    from cityseg_deploy.models.registry import build_model

    meta = ModelMeta.for_arch("unet_small", input_size=(32, 64))
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("unet_small", **meta.arch_args).eval(), meta)
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with runtime.load(path, threads=other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before  # it used to stay at the runner's count


def test_cli_sets_a_passive_openmp_wait_policy_unless_given():
    code = "import os, cityseg_deploy.cli; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout
    assert out.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout
    assert out.strip() == "ACTIVE"
