"""Shared bench plumbing: a real control plane, a real OCI registry, the operator as a process.

Everything runs on loopback. Benchmarks measure counts (from the operator's Prometheus
metrics), latencies (from a watch on the API server, stamped in this process) and the
operator's own resource use (/proc); nothing here asserts on time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import requests.adapters

from coursehub_dev import samples
from coursehub_dev.cluster import DevCluster
from coursehub_dev.paths import Z2JH_CHART, crd_files
from coursehub_dev.registry import OciRegistry
from coursehub_dev.samples import course_manifest
from coursehub_dev.waiting import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
GROUP_PATH = "/apis/coursehub.dev/v1alpha1"
WRITE_METHODS = ("PATCH", "POST", "PUT", "DELETE")
MUTATING_HELM = ("install", "upgrade", "rollback", "uninstall")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The previous main: the commit before issue 16's latency/registry work. Benches run the same
# measurement against it (--base REV to compare with another commit, --no-base to skip).
BASE_DEFAULT = "cd0627fdc1cbeaa7dfad5453c13264f209860c51"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- small statistics -----------------------------------------------------------
def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: with 20 samples p95 is the 19th)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def fmt_s(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f} s"


# -- manifests ------------------------------------------------------------------
def hub_manifest(name: str, domain: str | None = None, **spec) -> dict:
    return samples.hub_manifest(name, domain=domain or f"{name}.example.edu", **spec)


STEMS = ["uai_source-uai.", "mitxt-6.", "mitxt-18.", "clustering_and_descriptive_ai_", "deep.learning_"]


def slug(i: int) -> str:
    """Realistic slugs (dots, underscores, digits), unique per i."""
    return f"{STEMS[i % len(STEMS)]}{i}{'a' if i % 3 == 0 else ''}"


def bench_course(i: int, ref: str, digits: int = 4) -> dict:
    """Course number ``i`` of a benchmark: CourseImage ``c<i>`` with ``slug(i)`` and image ``ref``;
    every 5th needs a GPU, so both pullers (general and GPU) take part."""
    return course_manifest(f"c{i:0{digits}d}", slug(i), ref, gpu="required" if i % 5 == 4 else "none")


def deal_courses(
    namespaces: list[str], refs: list[str], n: int, digits: int = 4
) -> tuple[dict[str, list[dict]], list[tuple[str, str]]]:
    """``n`` bench courses dealt round-robin over the namespaces (the images reused in turn): the
    manifests per namespace, and every course's (namespace, name)."""
    per_ns: dict[str, list[dict]] = {ns: [] for ns in namespaces}
    for i in range(n):
        per_ns[namespaces[i % len(namespaces)]].append(bench_course(i, refs[i % len(refs)], digits))
    return per_ns, [(ns, m["metadata"]["name"]) for ns, ms in per_ns.items() for m in ms]


# -- API server client ------------------------------------------------------------
class _SSLAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, ctx, **kw):
        self._ctx = ctx
        super().__init__(**kw)

    def init_poolmanager(self, *a, **kw):
        kw["ssl_context"] = self._ctx
        return super().init_poolmanager(*a, **kw)


class Api:
    """A tiny synchronous client for the dev cluster (admin client certificate)."""

    def __init__(self, cluster: DevCluster):
        self.base = cluster.server
        # The cluster's own SSL context: its CA is minimal (no key identifiers), which
        # urllib3's stricter default verification refuses.
        self.ssl = cluster._ssl()
        self._local = threading.local()

    def session(self) -> requests.Session:
        s = requests.Session()
        s.mount("https://", _SSLAdapter(self.ssl))
        return s

    @property
    def http(self) -> requests.Session:
        # One keep-alive session per thread (requests.Session is not thread-safe).
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = self.session()
        return s

    def _check(self, r: requests.Response) -> dict:
        if r.status_code >= 400:
            raise RuntimeError(f"{r.request.method} {r.url}: {r.status_code} {r.text[:300]}")
        return r.json()

    def get(self, path: str, **params) -> dict:
        return self._check(self.http.get(self.base + path, params=params, timeout=30))

    def get_or_none(self, path: str) -> dict | None:
        r = self.http.get(self.base + path, timeout=30)
        return None if r.status_code == 404 else self._check(r)

    def create(self, path: str, obj: dict) -> dict:
        return self._check(self.http.post(self.base + path, json=obj, timeout=30))

    def merge_patch(self, path: str, patch: dict) -> dict:
        return self._check(
            self.http.patch(
                self.base + path,
                data=json.dumps(patch),
                timeout=30,
                headers={"Content-Type": "application/merge-patch+json"},
            )
        )

    def create_namespace(self, name: str) -> None:
        self.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )

    def create_courses(self, ns: str, manifests: list[dict], workers: int = 8) -> dict[str, float]:
        """POST every CourseImage (in parallel for bursts); returns name -> monotonic time of its POST."""
        stamps: dict[str, float] = {}

        def one(m: dict) -> None:
            stamps[m["metadata"]["name"]] = time.monotonic()
            self.create(f"{GROUP_PATH}/namespaces/{ns}/courseimages", m)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, manifests))
        return stamps

    def hub(self, ns: str, name: str) -> dict:
        return self.get(f"{GROUP_PATH}/namespaces/{ns}/jupyterhubdeployments/{name}")


def cond(obj: dict, type_: str) -> dict:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return {}


def cond_true_now(obj: dict, type_: str) -> bool:
    """True and about the current generation (not a stale True from before an edit)."""
    c = cond(obj, type_)
    return c.get("status") == "True" and c.get("observedGeneration") == obj["metadata"].get("generation")


class CourseWatch:
    """Watches CourseImages and stamps when each first shows Published=True / Ready=True.

    Stamps are taken in this process when the watch event arrives, so apply -> stamp is what
    a client polling the API would see (plus at most the watch delivery delay).
    """

    def __init__(self, api: Api, namespaces: list[str] | None = None):
        self.api = api
        self.paths = (
            [f"{GROUP_PATH}/namespaces/{ns}/courseimages" for ns in namespaces]
            if namespaces
            else [f"{GROUP_PATH}/courseimages"]
        )
        self.published: dict[tuple[str, str], float] = {}
        self.ready: dict[tuple[str, str], float] = {}
        self.seen: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in self.paths]
        self._lock = threading.Lock()

    def start(self) -> CourseWatch:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _observe(self, obj: dict) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        now = time.monotonic()
        with self._lock:
            self.seen.add(key)
            if key not in self.published and cond_true_now(obj, "Published"):
                self.published[key] = now
            if key not in self.ready and cond_true_now(obj, "Ready"):
                self.ready[key] = now

    def _run(self, path: str) -> None:
        session = self.api.session()
        rv = None
        while not self._stop.is_set():
            try:
                if rv is None:  # (re)list, then watch from that point
                    listing = session.get(self.api.base + path, timeout=60).json()
                    for item in listing.get("items", []):
                        item.setdefault("metadata", {})["namespace"] = item["metadata"].get("namespace")
                        self._observe(item)
                    rv = listing["metadata"]["resourceVersion"]
                # Short server-side timeouts so the loop notices stop() within seconds.
                with session.get(
                    self.api.base + path,
                    stream=True,
                    timeout=(5, 30),
                    params={
                        "watch": "1",
                        "resourceVersion": rv,
                        "timeoutSeconds": "10",
                        "allowWatchBookmarks": "true",
                    },
                ) as r:
                    for line in r.iter_lines():
                        if not line:
                            continue
                        ev = json.loads(line)
                        if ev["type"] == "ERROR":
                            rv = None  # 410 Gone: start over from a fresh list
                            break
                        rv = ev["object"]["metadata"].get("resourceVersion", rv)
                        if ev["type"] in ("ADDED", "MODIFIED"):
                            self._observe(ev["object"])
            except (requests.RequestException, ValueError, KeyError):
                time.sleep(0.2)

    def wait_all(self, keys: list[tuple[str, str]], which: str, timeout: float) -> None:
        target = self.ready if which == "ready" else self.published
        wait_until(
            lambda: all(k in target for k in keys),
            timeout=timeout,
            interval=0.05,
            what=f"{len(keys)} courses {which} (have {sum(k in target for k in keys)})",
        )


# -- another commit's operator, side by side ----------------------------------------------
class SourceTree:
    """The operator source of `rev` in a temporary git worktree (the working tree is never
    touched); a process started with `env()` imports `coursehub` from there.

    Its hubs install the working tree's hub chart (the same z2jh .tgz, byte for byte) unpacked
    into a directory (`hub_spec()`): operators older than the packaged chart (b14f83b; e.g.
    BASE_DEFAULT) read `<path>/Chart.yaml` only and refuse a .tgz with ChartNotFound ("no chart
    at ...tgz: Not a directory"), so their hub never got ReleaseDeployed. Helm installs a chart
    directory and its .tgz alike, so both trees deploy the same hub."""

    def __init__(self, rev: str):
        self.rev = rev
        self.parent = Path(tempfile.mkdtemp(prefix="coursehub-base-"))
        self.dir = self.parent / "tree"
        self.charts = self.parent / "charts"
        self.chart = self.charts
        self.commit = ""

    def __enter__(self) -> SourceTree:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(self.dir), self.rev],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        self.commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=self.dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        with tarfile.open(Z2JH_CHART) as tar:
            # A packaged chart holds one top directory, the chart's name (jupyterhub/).
            top = {m.name.split("/")[0] for m in tar.getmembers()}
            tar.extractall(self.charts, filter="data")
        if len(top) != 1:
            raise RuntimeError(f"{Z2JH_CHART}: expected one chart directory, found {sorted(top)}")
        self.chart = self.charts / top.pop()
        log(f"previous main: {self.commit} in {self.dir}, hub chart {self.chart}")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["git", "worktree", "remove", "--force", str(self.dir)], cwd=REPO, capture_output=True)
        import shutil

        shutil.rmtree(self.parent, ignore_errors=True)

    def env(self) -> dict[str, str]:
        # PYTHONPATH comes before the venv's editable install of the working tree; the chart
        # policy allows the unpacked hub chart (and no longer the .tgz it cannot read).
        return {"PYTHONPATH": str(self.dir / "operator"), "COURSEHUB_CHART_PATHS": str(self.charts)}

    def hub_spec(self) -> dict:
        """What a hub manifest for this tree's operator sets: the unpacked hub chart."""
        return {"chart": {"path": str(self.chart)}}


def add_base_args(ap) -> None:
    ap.add_argument(
        "--base",
        default=BASE_DEFAULT,
        help=f"commit to measure side by side, from a temporary git worktree (default {BASE_DEFAULT[:7]})",
    )
    ap.add_argument("--no-base", action="store_true", help="measure the working tree only")


# -- the operator as a process -----------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Metrics(dict):
    """{(name, frozenset(labels)): value} from one scrape; subtract two scrapes for a window."""

    def __sub__(self, other: Metrics) -> Metrics:
        return Metrics({k: v - other.get(k, 0.0) for k, v in self.items()})

    def sum(self, name: str, **where) -> float:
        total = 0.0
        for (n, labels), v in self.items():
            if n != name:
                continue
            d = dict(labels)
            if all(
                (d.get(k) in want) if isinstance(want, tuple) else d.get(k) == want
                for k, want in where.items()
            ):
                total += v
        return total

    # The figures every benchmark reports.
    def writes(self, kind: str | tuple | None = None) -> int:
        where = {"method": WRITE_METHODS}
        if kind is not None:
            where["kind"] = kind if isinstance(kind, tuple) else (kind,)
        return int(self.sum("coursehub_kube_requests_total", **where))

    def writes_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (n, labels), v in self.items():
            d = dict(labels)
            if n == "coursehub_kube_requests_total" and d.get("method") in WRITE_METHODS and v:
                k = f"{d['method']} {d['kind']}"
                out[k] = out.get(k, 0) + int(v)
        return dict(sorted(out.items()))

    def reads(self) -> int:
        return int(self.sum("coursehub_kube_requests_total", method="GET"))

    def helm_mutations(self) -> int:
        return int(self.sum("coursehub_helm_operations_total", operation=MUTATING_HELM))

    def helm_calls(self) -> int:
        return int(self.sum("coursehub_helm_operations_total"))

    def registry_calls(self) -> int:
        return int(self.sum("coursehub_registry_calls_total"))


def parse_metrics(text: str) -> Metrics:
    m = Metrics()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        hit = _SAMPLE.match(line)
        if hit:
            labels = frozenset(_LABEL.findall(hit.group(3) or ""))
            m[(hit.group(1), labels)] = float(hit.group(4))
    return m


def operator_python(project: Path = REPO, venv: Path | None = None) -> str:
    """The Python of a venv holding the operator as its image does (`uv sync --no-dev`, as the
    Dockerfile): RSS is the image's, not the dev venv's, where kopf also loads the generated
    kubernetes_asyncio client (tens of MB) only because the tests install it. `project`: the
    checkout whose uv.lock it follows (a previous main's worktree has its own)."""
    venv = venv or REPO / ".venv-operator"
    stamp = venv / "uv.lock.synced"
    lock = (project / "uv.lock").read_text()
    if not stamp.exists() or stamp.read_text() != lock:
        log(f"syncing {venv} (the operator's runtime dependencies only)")
        subprocess.run(
            ["uv", "sync", "--frozen", "--no-dev"],
            cwd=project,
            env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
            check=True,
            capture_output=True,
        )
        stamp.write_text(lock)
    return str(venv / "bin" / "python")


class Operator:
    """`python -m coursehub.cli run -n ...` with COURSEHUB_* settings; metrics and /proc readings.

    Each tree runs from `operator_python()`, a venv of its image's dependencies from its own
    uv.lock (a previous main's may differ from today's: cd0627f still had kubernetes-asyncio as a
    runtime dependency), so peak RSS compares image with image."""

    def __init__(
        self,
        cluster: DevCluster,
        namespaces: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        source: SourceTree | None = None,
    ):
        self.cluster = cluster
        self.source = source
        self.namespaces = namespaces
        self.log_path = log_path
        self.port = free_port()
        # The operator's defaults, except: no ECR here, and a metrics port of its own.
        self.env = {
            **cluster.env(),
            "COURSEHUB_METRICS_PORT": str(self.port),
            "COURSEHUB_ECR_LIFECYCLE": "false",
            # The benchmark registry is plain HTTP on loopback: named, or the resolver refuses it.
            "COURSEHUB_INSECURE_REGISTRIES": "127.0.0.1",
            **(source.env() if source else {}),
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        # The operator package is imported from the working tree when the process starts:
        # name the exact source it ran, since the tree may differ from any commit.
        where = f"{self.source.commit} (worktree)" if self.source else source_fingerprint()
        log(f"operator {self.log_path.stem}: source {where}")
        python = (
            operator_python(self.source.dir, self.source.parent / "venv")
            if self.source
            else operator_python()
        )
        args = [python, "-m", "coursehub.cli", "run", "--liveness", ""]
        for ns in self.namespaces:
            args += ["-n", ns]
        # The child keeps its own copy of the log's descriptor; ours closes with the block.
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                args,
                env=self.env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_until(
            lambda: self.scrape() is not None, timeout=60, what="operator metrics endpoint", interval=0.2
        )
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def scrape(self) -> Metrics | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"operator exited with {self.proc.returncode}; see {self.log_path}")
        try:
            r = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10)
            return parse_metrics(r.text)
        except requests.RequestException:
            return None

    def metrics(self) -> Metrics:
        m = self.scrape()
        if m is None:
            raise RuntimeError("operator metrics endpoint not answering")
        return m

    def peak_rss_mb(self, field: str = "VmHWM") -> float:
        """Peak RSS (VmHWM), or the current one with field="VmRSS"."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> tuple[float, float]:
        """(the operator's own user+system CPU, that of its waited-for children: helm)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        return (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK


def source_fingerprint() -> str:
    """`<commit>` or `<commit>+dirty:<sha256 of operator/coursehub/**/*.py>[:12]`."""
    import hashlib

    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "operator/coursehub"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    if not dirty:
        return head
    h = hashlib.sha256()
    for f in sorted((REPO / "operator" / "coursehub").rglob("*.py")):
        h.update(f.read_bytes())
    return f"{head}+dirty:{h.hexdigest()[:12]}"


# -- the whole environment -------------------------------------------------------
class Env:
    """Control plane + registry + operators, torn down on exit (also on errors)."""

    def __init__(self, keep: bool = False):
        self.workdir = Path(tempfile.mkdtemp(prefix="coursehub-bench-"))
        self.keep = keep
        self.cluster: DevCluster | None = None
        self.registry: OciRegistry | None = None
        self.api: Api | None = None
        self.operators: list[Operator] = []
        self.watches: list[CourseWatch] = []
        # namespace -> the other commit's tree whose operator watches it (install_hub/install_hubs
        # give those hubs the chart that tree reads: SourceTree.hub_spec)
        self.sources: dict[str, SourceTree] = {}

    def __enter__(self) -> Env:
        # SIGTERM (e.g. from `timeout`) unwinds through __exit__, so no process is left behind.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        log(f"workdir {self.workdir}")
        self.cluster = DevCluster(state_dir=self.workdir / "cluster", log=lambda m: log(str(m)))
        self.cluster.up(crds=crd_files())
        self.api = Api(self.cluster)
        (self.workdir / "registry").mkdir()
        self.registry = OciRegistry(self.workdir / "registry")
        self.registry.start()
        return self

    def __exit__(self, *exc) -> None:
        for w in self.watches:
            w.stop()
        for op in self.operators:
            op.stop()
        if self.registry:
            self.registry.stop()
        if self.cluster:
            self.cluster.down(quiet=True)
        if not self.keep:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"kept {self.workdir} (operator logs there)")

    def operator(
        self,
        namespaces: list[str],
        name: str,
        env: dict[str, str] | None = None,
        source: SourceTree | None = None,
    ) -> Operator:
        op = Operator(self.cluster, namespaces, self.workdir / f"operator-{name}.log", env, source)
        self.operators.append(op.start())
        if source is not None:
            self.sources.update(dict.fromkeys(namespaces, source))
        return op

    def hub_manifest(self, ns: str, name: str, **spec) -> dict:
        """`hub_manifest` for a hub in `ns`, with the chart of the tree whose operator watches it."""
        source = self.sources.get(ns)
        return hub_manifest(name, **{**(source.hub_spec() if source else {}), **spec})

    def watch(self, namespaces: list[str] | None = None) -> CourseWatch:
        w = CourseWatch(self.api, namespaces).start()
        self.watches.append(w)
        return w

    def install_hub(self, ns: str, name: str = "learn", timeout: float = 300, **spec) -> dict:
        """Create a namespace's hub and wait until its release is deployed."""
        self.api.create(
            f"{GROUP_PATH}/namespaces/{ns}/jupyterhubdeployments", self.hub_manifest(ns, name, **spec)
        )
        return self.wait_hub(ns, name, timeout)

    def install_hubs(
        self, namespaces: list[str], name: str = "learn", timeout: float = 600, interval: float = 0.2, **spec
    ) -> None:
        """A hub in each namespace (domain <ns>.example.edu, `spec` on top), all created before
        waiting on any (the operator installs them concurrently), then each waited for until deployed."""
        for ns in namespaces:
            self.api.create(
                f"{GROUP_PATH}/namespaces/{ns}/jupyterhubdeployments",
                self.hub_manifest(ns, name, **{"domain": f"{ns}.example.edu", **spec}),
            )
        for ns in namespaces:
            self.wait_hub(ns, name, timeout, interval)

    def wait_hub(self, ns: str, name: str, timeout: float, interval: float = 0.2) -> dict:
        def deployed() -> dict:
            h = self.api.hub(ns, name)
            if cond_true_now(h, "ReleaseDeployed"):
                return h
            # Not yet: the condition as it stands goes into the timeout's message (a refused
            # chart says ChartNotFound and why, instead of a bare timeout).
            c = cond(h, "ReleaseDeployed")
            raise RuntimeError(f"ReleaseDeployed={c.get('status')} {c.get('reason')}: {c.get('message')}")

        return wait_until(
            deployed,
            timeout=timeout,
            what=f"hub {ns}/{name} ReleaseDeployed",
            interval=interval,
        )

    def push_images(self, repo: str, slugs: list[str], seed: str = "") -> dict[str, str]:
        """One distinct image per slug (tag = slug), as course CI does; returns slug -> pinned ref."""
        out = {}
        for s in slugs:
            digest = self.registry.push_image(repo, s, f"{seed}{s}")
            out[s] = f"{self.registry.host}/{repo}@{digest}"
        return out


def settle(op: Operator, *, quiet_for: float = 5.0, timeout: float = 120.0) -> Metrics:
    """Wait until the operator made no API writes for `quiet_for` seconds (trailing status/rollout
    writes after the last course went Ready belong to the burst, not to the idle window).
    Lease writes do not count: with leader election on they never stop (one PUT every 2 s, and
    a shard's namespace claims), so counting them made every settle run to its timeout."""
    deadline = time.monotonic() + timeout
    last = op.metrics()
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        cur = op.metrics()
        if cur.writes() - cur.writes("Lease") != last.writes() - last.writes("Lease"):
            last_change = time.monotonic()
        last = cur
        if time.monotonic() - last_change >= quiet_for:
            break
    return last


def idle(op: Operator, seconds: float, label: str) -> Metrics:
    """Sleep through an idle window in bounded steps, logging progress; returns the window's delta."""
    before = op.metrics()
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(60.0, left))
        log(
            f"{label}: {max(0, end - time.monotonic()):.0f} s left, writes so far "
            f"{(op.metrics() - before).writes()}"
        )
    return op.metrics() - before


def table(rows: list[tuple], headers: tuple) -> str:
    cols = list(zip(*([headers] + [tuple(str(c) for c in r) for r in rows]), strict=True))
    widths = [max(len(c) for c in col) for col in cols]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(headers), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])
