"""The launcher's typed config: `configs/launcher.yaml`, then `--set`, then flags.

Loaded with `trainer.config.load_config`, so an unknown key or a value of the
wrong type, or a number outside its `bounded(...)` range, is one clear error
line naming the key and the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainer.config import bounded, load_config, resolve_config_path


@dataclass
class VastConfig:
    # Offer filters. GPU names are Vast's, e.g. "RTX 4090", "H100 SXM", "A100 SXM4".
    gpu_names: list[str] = field(default_factory=lambda: ["RTX 4090"])
    num_gpus: int = bounded(1, ge=1)
    max_dph: float = bounded(1.0, gt=0)  # $/h cap for the whole machine (Vast's dph_total)
    min_reliability: float = bounded(0.98, ge=0, le=1)
    disk_gb: float = bounded(60.0, ge=8)  # disk to rent; smaller offers are skipped. Vast's create refuses under 8
    min_inet_down: float = bounded(200.0, ge=0)  # Mb/s, the data comes from the Hub
    min_cuda: float = bounded(12.8, ge=0)  # the project's image is CUDA 12.8 (the stock image 12.6): older drivers refuse it
    interruptible: bool = False  # bid (cheaper, can be outbid) instead of on-demand
    bid_price: float | None = bounded(None, gt=0)  # $/h for interruptible; None: the offer's min_bid + 5%
    order: str = "dph_total"  # offer field to sort by, ascending
    limit: int = bounded(20, ge=1)
    # What runs on the instance: your own image with the project in it (what `launcher image push`
    # pushed), or None: the stock PyTorch image below, with this checkout's wheel installed at start.
    image: str | None = None
    # Pinned to the torch the project is tested with; popular tags are often cached on Vast hosts.
    stock_image: str = "pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime"
    wheel: str | None = None  # stock image: a built wheel to install; None: build one from this checkout
    # Stock image: torch is there already. SSH sessions on Vast do not see the image's ENV (its PATH to conda's
    # python; Vast's docs, "Docker Execution Environment"), so `jobs` goes on the default PATH, as in our own image.
    install_command: str = "/opt/conda/bin/python -m pip install --quiet {wheel} && ln -sf /opt/conda/bin/jobs /usr/local/bin/jobs"
    label_prefix: str = "llm-forge"  # instances are labelled <prefix>-<name>-<time>; `ls` finds them by it
    ready_timeout_s: float = bounded(900.0, gt=0)  # from create to reachable SSH; past it the instance is destroyed
    poll_interval_s: float = bounded(5.0, gt=0)
    try_other_offer: bool = True  # after a readiness failure, one more offer on another machine


@dataclass
class ColabConfig:
    host: str | None = None  # the *.trycloudflare.com name the notebook printed
    user: str = "root"
    port: int = bounded(22, ge=1, le=65535)
    proxy_command: str = "cloudflared access ssh --hostname %h"
    install: bool = True  # Colab has no image: install this project's wheel on the host
    wheel: str | None = None  # a built wheel to upload; None: build one from this checkout
    install_command: str = "python3 -m pip install --quiet {wheel}"


@dataclass
class SshHostConfig:
    host: str | None = None  # a name in ~/.ssh/config or a host name
    user: str | None = None  # None: ~/.ssh/config's User, else root
    port: int | None = bounded(None, ge=1, le=65535)
    identity_file: str | None = None
    proxy_command: str | None = None


@dataclass
class RemoteConfig:
    workdir: str = "/workspace"  # where data/, tokenizer/ and runs/ live on the host
    # How to run the `jobs` CLI there (a shell word or words). `env`, because a
    # bare `jobs` in a shell command line is the shell's job-control builtin.
    jobs_command: str = "env jobs"
    tmux_socket: str = "llm-forge"  # a private tmux server (`tmux -L`), apart from the user's
    connect_timeout_s: float = bounded(300.0, gt=0)  # bounded wait for SSH to answer
    # Names of local environment variables handed to the job through a 0600 env
    # file on the host (never argv). The Vast key stays home unless listed here.
    forward_env: list[str] = field(
        default_factory=lambda: ["HF_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                                 "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"]
    )
    guard_poll_s: float = bounded(30.0, gt=0)  # how often the budget guard beside the job looks at the clock
    # A rented instance stops itself this long after its job ended unless the launcher destroyed
    # it first (`watch` does at once): a closed laptop does not leave a GPU billing. 0: never.
    idle_stop_after_s: float = bounded(1800.0, ge=0)


@dataclass
class JobConfig:
    job: str = "train"  # a `jobs` sub-command: train, pipeline, ...
    config: str | None = "train.yaml"  # training config, read here, validated, uploaded
    set: list[str] = field(default_factory=list)  # dotted overrides for that config
    smoke: bool = False  # `jobs train --smoke`: the tiny CPU run, run name `smoke`
    # `jobs` sub-commands run first, in the same tmux session (so the data comes
    # from the Hub straight to the host, not through the laptop). `{config}`
    # becomes the job's own config flag (--config FILE or --smoke).
    before: list[str] = field(default_factory=lambda: ["sync-data pull {config}"])


@dataclass
class PullConfig:
    dest: str = "runs"  # local folder; a run lands in <dest>/<run>/
    checkpoints: list[str] = field(default_factory=lambda: ["latest", "best", "final"])
    files: list[str] = field(
        default_factory=lambda: [
            "metrics.jsonl",
            "fixed_prompt_samples.txt",
            "eval.json",
            "job.json",
            "jobs.jsonl",
            "budget.json",
            "tracking.json",  # the run's W&B id, which `up --resume` sends to the next host
            "tensorboard",  # the event files: `tensorboard --logdir runs/` on the laptop
        ]
    )
    method: str = "auto"  # auto (rsync when both ends have it) | rsync | sftp


@dataclass
class PricingConfig:
    expected_mfu: float = bounded(0.35, gt=0, le=1)  # for GPUs with no measured throughput yet
    dataset_gb: float | None = bounded(None, ge=0)  # for the download time; None: the local data dir's .bin files


@dataclass
class WatchConfig:
    poll_interval_s: float = bounded(60.0, gt=0)  # between looks at the instance and the job; new checkpoints are pulled each time
    auto_resume: bool = False  # a lost (outbid) instance: rent another and resume from the latest pulled checkpoint
    max_resumes: int = bounded(3, ge=0)
    unreachable_timeout_s: float = bounded(1800.0, gt=0)  # SSH failing this long counts as losing the instance
    keep_awake: bool = True  # hold off idle sleep while watching (caffeinate / systemd-inhibit)


@dataclass
class LauncherConfig:
    provider: str = "vast"  # vast | colab | ssh
    name: str = "default"  # one deployment; several can live side by side
    state_dir: str = "~/.local/state/llm-forge"  # state.json, pinned host keys, ssh configs
    ssh_key: str = "~/.ssh/llm-forge_ed25519"  # made with ssh-keygen when missing (vast)
    vast: VastConfig = field(default_factory=VastConfig)
    colab: ColabConfig = field(default_factory=ColabConfig)
    ssh: SshHostConfig = field(default_factory=SshHostConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    job: JobConfig = field(default_factory=JobConfig)
    pull: PullConfig = field(default_factory=PullConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)

    def __post_init__(self) -> None:
        if self.provider not in ("vast", "colab", "ssh"):
            raise ValueError(f"provider must be vast, colab or ssh, got {self.provider!r}")
        if self.pull.method not in ("auto", "rsync", "sftp"):
            raise ValueError(f"pull.method must be auto, rsync or sftp, got {self.pull.method!r}")

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser()


def load_launcher_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> LauncherConfig:
    """The file when given, else the bundled configs/launcher.yaml when there, else the defaults."""
    if path is None and resolve_config_path("launcher.yaml").is_file():
        path = "launcher.yaml"
    return load_config(LauncherConfig, path, overrides)
