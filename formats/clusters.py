"""
cluster.py's output folder: the files one clustering run writes as a set, and
the three that routing and explain.py read back, checked.

    write_outputs("out/clusters", centroids, files)  # the set, replaced as a whole
    C, layer, cosine = read_centroids("out/clusters", model.config)  # (k, C) and how they were made
    records = read_assignments("out/clusters")     # [{"question", "cluster", ...}] per question
    skills = read_cluster_skills("out/clusters", k)  # {"0": {"skill", "share", "size", "submodule"}}

The folder holds assignments.json, centroids.npy (float32, k x hidden size),
cluster_skills.json, groups.json (k, the expert groups, the embedding layer,
cosine or not), sweep.json when k was chosen from a range (each k's silhouette
and inertia), report.md and clusters.png when python -m study.clusters wrote it,
and the .lock of its one writer (formats.files.lock): the new set takes the held
lock file along (a hard link), so the folder stays locked while it is swapped.

Left out: appending to a folder: a new run replaces the old set.
"""
import json
import os
import shutil

import numpy as np

from formats.files import UserError, read_json

OUTPUTS = {"assignments.json", "centroids.npy", "cluster_skills.json", "clusters.png", "groups.json",
           "report.md", "sweep.json"}
LOCK = ".lock"      # formats.files.lock's file
READ_BACK = ("centroids.npy", "cluster_skills.json", "groups.json")   # what routing and explain.py read


def has_output(folder):
    """Whether folder holds the cluster.py files that routing and explain.py read."""
    return all(os.path.exists(os.path.join(folder, n)) for n in READ_BACK)


def check_replaceable(out):
    """`out` is absent or holds nothing but an earlier run's files (it is replaced whole)."""
    others = sorted(set(os.listdir(out)) - OUTPUTS - {LOCK}) if os.path.isdir(out) else []
    if others:
        raise UserError(f"--out {out}: holds files that cluster.py did not write ({others[:3]}); cluster.py "
                        "replaces its --out folder as a whole, so give it a folder of its own")


def write_outputs(out, centroids, files, report=None, draw=None):
    """The files of one run (labels, centroids and groups together) into a fresh
    folder beside `out`, which then takes out's place: `files` {name: JSON value},
    centroids.npy and, when given, the markdown `report` (report.md) and the
    picture draw(path) makes (clusters.png). Called under
    formats.files.lock(out): out/.lock goes along into the new folder."""
    check_replaceable(out)
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.save(os.path.join(tmp, "centroids.npy"), centroids.astype(np.float32))
    for name, obj in files.items():
        with open(os.path.join(tmp, name), "w") as f:
            json.dump(obj, f, indent=1)
    if report is not None:
        with open(os.path.join(tmp, "report.md"), "w") as f:
            f.write(report)
    if draw is not None:
        draw(os.path.join(tmp, "clusters.png"))
    os.link(os.path.join(out, LOCK), os.path.join(tmp, LOCK))     # the same file: the lock held stays held
    replace_dir(tmp, out)


def replace_dir(new, old):
    """Put folder `new` where `old` is, by renames: a reader finds the old set or the
    new set, never a mix of both."""
    shutil.rmtree(old.rstrip("/") + ".old", ignore_errors=True)
    if os.path.isdir(old):
        os.replace(old, old.rstrip("/") + ".old")
    os.replace(new, old)
    shutil.rmtree(old.rstrip("/") + ".old", ignore_errors=True)


def read_centroids(assign_dir, config):
    """(centroids (k, C), embedding layer, cosine) of cluster.py --out assign_dir,
    checked against the base model's config."""
    info = _read(os.path.join(assign_dir, "groups.json"), _is_groups_info,
                 "an object with an integer 'layer' >= 0 and a true/false 'cosine'")
    C = _read_npy(os.path.join(assign_dir, "centroids.npy"))
    layer = info["layer"]
    if layer > config.num_hidden_layers:
        raise UserError(f"{assign_dir}/groups.json: layer {layer}, but the base model has "
                        f"{config.num_hidden_layers} layers")
    if C.shape[1] != config.hidden_size:
        raise UserError(f"{assign_dir}/centroids.npy: centroids are {C.shape[1]} wide, but the base "
                        f"model embeds {config.hidden_size} wide: these clusters were made with "
                        "another base model")
    return C, layer, info.get("cosine", False)


def read_assignments(assign_dir):
    """assignments.json: the cluster of every question that was clustered."""
    return _read(os.path.join(assign_dir, "assignments.json"), _is_assignments,
                 "a non-empty list of {\"question\": text, \"cluster\": integer >= 0}")


def read_cluster_skills(assign_dir, k):
    """cluster_skills.json: each of the k clusters' majority skill and submodule, share and size."""
    return _read(os.path.join(assign_dir, "cluster_skills.json"),
                 lambda s: isinstance(s, dict) and all(_is_cluster_info(s.get(str(c))) for c in range(k)),
                 f"an entry (skill, share, size, submodule) for each of the {k} clusters")


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _read(path, ok, want):
    """The JSON file at path, if ok(it); else one line naming the file and what was expected."""
    obj = read_json(path, f"run python cluster.py --out {os.path.dirname(path)} first")
    if not ok(obj):
        raise UserError(f"{path}: expected {want}, as cluster.py writes it")
    return obj


def _is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_groups_info(g):
    return isinstance(g, dict) and _is_count(g.get("layer")) and isinstance(g.get("cosine", False), bool)


def _is_assignments(records):
    return isinstance(records, list) and len(records) > 0 and all(
        isinstance(r, dict) and isinstance(r.get("question"), str) and _is_count(r.get("cluster"))
        for r in records)


def _is_cluster_info(info):
    return isinstance(info, dict) and isinstance(info.get("skill"), str) and isinstance(info.get("submodule"), str) \
        and isinstance(info.get("share"), (int, float)) and isinstance(info.get("size"), int)


def _read_npy(path):
    """centroids.npy: a (k, C) array of finite floats."""
    if not os.path.exists(path):
        raise UserError(f"{path} not found: run python cluster.py --out {os.path.dirname(path)} first")
    try:
        C = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a .npy array ({e})") from None
    if C.ndim != 2 or C.shape[0] == 0 or C.dtype.kind != "f" or not np.isfinite(C).all():
        raise UserError(f"{path}: expected a (clusters, hidden size) array of finite floats, got "
                        f"{C.dtype} {C.shape}" + ("" if C.dtype.kind != "f" or np.isfinite(C).all() else
                                                  " with NaN or inf"))
    return C
