#!/usr/bin/env bash
# CI stage "container": build the action's image without a Docker engine and run its entrypoint the way GitHub
# runs a container action, against real servers on loopback:
#   * the image is built from ./Dockerfile with buildah (vfs storage, chroot isolation, no pulls); the base
#     image debian:bookworm-slim is bootstrapped with debootstrap when it is not in local storage yet;
#   * task, judge and optimizer model: the embedded SmolLM2 served by `transformers serve` (OpenAI-compatible);
#   * GitHub: tests/fake_github.py, which checks every request against the committed subset of GitHub's
#     OpenAPI description (tests/github_spec/) and opens a pull request only for a branch pushed to the remote.
# Two workflows run, each twice, on one example prompt (picked below: the cheapest a served model can score):
#   * the pull request gate (mode: check, event pull_request): a repository made from examples/ (base commit +
#     a head commit that rewords the prompt) mounted at /github/workspace, owned by another uid as on a runner.
#     Asserted: a verdict exit code (0 or 1), a `verdict` output, a job summary, exactly one sticky comment (also
#     after the rerun);
#   * the nightly tuning job (mode: optimize, open-pr, event schedule): a clone of a bare git repository that
#     stands for GitHub's copy (its `origin`, mounted at the same path in the container), tuned within a small
#     call budget. Asserted: exit 0, a job summary, the artifact (report.md, result.json) and the outputs
#     pr-number, pr-url, report-path; then either one pull request, whose branch on the remote is one gradgate
#     commit on main changing only the prompt, and which the rerun (a fresh clone, the response cache restored
#     as actions/cache would) updates instead of opening a second; or, when the small model found nothing
#     better on the test split, empty pr-number/pr-url, a report that says why, and no pull request or branch.
# Every run: the token masked before anything else is printed; no secret in the log, the summary, the report,
# the pushed branch or any request; no request outside GitHub's description, none without the token.
# Last, the EXTRAS=local image (torch's CPU build, transformers, the embedded models) is built and runs
# `gradgate eval` on the same prompt with the embedded model in process, when this machine holds torch's CPU
# build as a wheel (pip's find-links; this kind of machine has one): PyPI's torch for Linux x86_64 is the CUDA
# build, 2.2 GB of wheels more. Rerunnable; needs root.
#
# Environment: KEEP_WORK=1 keeps the temporary directory for debugging; RERUN=0 skips each workflow's second
# run; CHECK=0 skips the gate, NIGHTLY=0 the tuning job; LOCAL=auto|1|0 builds and runs the EXTRAS=local image
# when a CPU torch wheel is found in pip's find-links directories or TORCH_WHEEL_DIR (auto, the default), fails
# without one (1), or skips it (0); PROMPT=<id> picks the example prompt; BUDGET_CALLS caps the tuning job
# (default 100); PYTHON is the host interpreter with gradgate's test dependencies (default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
IMAGE=localhost/gradgate-action:ci
LOCAL_IMAGE=localhost/gradgate-action:ci-local
BASE_IMAGE=docker.io/library/debian:bookworm-slim
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
CONTAINER=gradgate-ci-run
REPOSITORY=octo-org/prompt-repo
PR_NUMBER=7
# Deliberately fake, built from parts so that no token-shaped literal sits in the repository.
FAKE_TOKEN="ghs""_gradgateCiFakeToken0000000000000"
FAKE_KEY="sk""-gradgate-ci-fake-key"
RERUN=${RERUN:-1}
CHECK=${CHECK:-1}
NIGHTLY=${NIGHTLY:-1}
LOCAL=${LOCAL:-auto}
BUDGET_CALLS=${BUDGET_CALLS:-100}
STORE=(--storage-driver vfs)
export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gradgate-ci.XXXXXX")
PIDS=()
TIMINGS=()
cleanup() {
    local pid
    if ((${#TIMINGS[@]})) && [ -z "${TIMINGS_SHOWN:-}" ]; then
        printf '\ntimings so far\n'
        printf '%s\n' "${TIMINGS[@]}"
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    buildah "${STORE[@]}" rm "$CONTAINER" >/dev/null 2>&1 || true
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
STAGE_START=$(date +%s)
CI_START=$STAGE_START
stage_done() {
    local now; now=$(date +%s)
    TIMINGS+=("$(printf '%-34s %5ss' "$1" $((now - STAGE_START)))")
    STAGE_START=$now
}
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit; i++)); do
        if "$@" >/dev/null; then return 0; fi
        sleep 1
    done
    fail "$what not ready after ${limit}s"
}

# -- 1. tools -------------------------------------------------------------------------------------------------
log "tools"
missing=()
for tool in buildah podman debootstrap git; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
buildah --version
stage_done "tools"

# -- 2. base image --------------------------------------------------------------------------------------------
log "base image $BASE_IMAGE"
if buildah "${STORE[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "already in vfs storage"
else
    # The registry is out of reach here, so build an equivalent Debian 12 root file system and import it.
    rootfs="$WORK/rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap.log"; fail "debootstrap"; }
    tar -C "$rootfs" -c . | podman "${STORE[@]}" import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi
stage_done "base image"

# -- 3. build -------------------------------------------------------------------------------------------------
build_image() {  # build_image IMAGE EXTRAS [BUILDAH ARGS...]; sets ENTRYPOINT
    local image=$1 extras=$2 old_image new_image ca=/etc/ssl/certs/ca-certificates.crt
    shift 2
    local build_args=(--build-arg "EXTRAS=$extras" "$@")
    if [ -f "$ca" ]; then  # pip inside the build must trust what the host trusts
        build_args+=(--volume "$ca:/etc/ssl/certs/host-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)
    fi
    log "build $image (EXTRAS=$extras)"
    old_image=$(buildah "${STORE[@]}" images --quiet --no-trunc "$image" 2>/dev/null || true)
    # --layers keeps the dependency layer between runs; only a change to pyproject.toml rebuilds it.
    buildah "${STORE[@]}" bud --isolation chroot --pull=never --layers --quiet -t "$image" "${build_args[@]}" \
        -f Dockerfile . >"$WORK/build-${image##*:}.log" 2>&1 \
        || { tail -n 40 "$WORK/build-${image##*:}.log"; fail "image build ($image)"; }
    new_image=$(buildah "${STORE[@]}" images --quiet --no-trunc "$image")
    if [ -n "$old_image" ] && [ "$old_image" != "$new_image" ]; then  # the previous run's image, now untagged
        buildah "${STORE[@]}" rmi "$old_image" >/dev/null 2>&1 || true
    fi
    buildah "${STORE[@]}" images "$image"
    mapfile -t ENTRYPOINT < <(buildah "${STORE[@]}" inspect --type image "$image" | "$PY" -c '
import json, sys
config = json.load(sys.stdin)["OCIv1"]["config"]
assert not config.get("User") and not config.get("WorkingDir"), "GitHub needs root and no WORKDIR"
print("\n".join(config["Entrypoint"]))')
    ((${#ENTRYPOINT[@]} > 1)) || fail "the image $image has no exec-form ENTRYPOINT"
    echo "entrypoint: ${ENTRYPOINT[*]}"
}
build_image "$IMAGE" ""
stage_done "build image"

# -- 4. example repositories ----------------------------------------------------------------------------------
log "example repositories"
# The prompt both workflows use: of the examples a served model can score (generated replies, not log-likelihood)
# with enough items to tune (10 or more), the cheapest (items x reply tokens; a judge metric counts as dearer),
# so the runs stay short even on 2 busy cores. PROMPT=id overrides. Prints the prompt's id, then the path of
# its file relative to examples/.
mapfile -t chosen < <("$PY" - "${PROMPT:-}" <<'EOF'
import json, re, sys
from pathlib import Path
import yaml
wanted, found = sys.argv[1], []
for path in sorted(Path("examples/prompts").rglob("*.md")):
    text = path.read_text(encoding="utf-8")
    head = re.match(r"---\n(.*?)\n---\n", text, re.S)
    front = (yaml.safe_load(head.group(1)) if head else None) or {}
    prompt_id = str(front.get("id") or path.stem)
    suite_file = Path("examples") / str(front.get("suite") or f"evals/{prompt_id}.yaml")
    if suite_file.suffix not in (".yaml", ".yml") or not suite_file.is_file():
        continue
    suite = yaml.safe_load(suite_file.read_text(encoding="utf-8")) or {}
    items = suite.get("items") or []
    generated = (suite.get("scoring") or {}).get("mode", "generate") == "generate"
    judged = "judge" in json.dumps(suite.get("metrics") or [])
    if prompt_id == wanted or (not wanted and generated and len(items) >= 10):
        cost = len(items) * int(suite.get("max_tokens") or 256)
        found.append((judged, cost, prompt_id, path.relative_to("examples")))
if found:
    *_, prompt_id, rel = min(found)
    print(f"{prompt_id}\n{rel.as_posix()}")
EOF
)
((${#chosen[@]} == 2)) \
    || fail "no example prompt fits (${PROMPT:+PROMPT=$PROMPT; }needed: a suite of 10+ items with generated replies)"
PROMPT_ID=${chosen[0]}
PROMPT_PATH=${chosen[1]}
echo "prompt $PROMPT_ID ($PROMPT_PATH)"
git_in() { local dir=$1; shift; git -C "$dir" -c user.name="gradgate ci" -c user.email=ci@gradgate.invalid "$@"; }
new_example_repo() {  # new_example_repo DIR: examples/ (less its workflows) committed on main
    mkdir -p "$1"
    cp -a examples/. "$1/"
    rm -rf "$1/workflows"
    git_in "$1" init -q -b main
    git_in "$1" add -A
    git_in "$1" commit -q -m "base"
}

# The pull request: a base commit and a head commit that changes one prompt's wording.
REPO="$WORK/workspace"
new_example_repo "$REPO"
BASE_SHA=$(git_in "$REPO" rev-parse HEAD)
git_in "$REPO" checkout -q -b reword-triage
# The head commit appends a sentence to the prompt's last line (whatever the example says), so check has a
# base/head pair that differs in wording only.
sed -i '$ s/[[:space:]]*$/ Keep the answer short./' "$REPO/$PROMPT_PATH"
git_in "$REPO" diff --quiet && fail "the head edit did not change examples/$PROMPT_PATH"
git_in "$REPO" commit -q -am "head: ask for a short answer"
HEAD_SHA=$(git_in "$REPO" rev-parse HEAD)
# On a runner the workspace belongs to the runner's user, not to the container's root: git refuses such a
# repository unless it is marked safe, which the entrypoint must do.
chown -R 1001:1001 "$REPO"
echo "pull request: base $BASE_SHA head $HEAD_SHA"

REMOTE="$WORK/remote.git"  # the nightly job's `origin`, made in section 6b
stage_done "example repositories"

# -- 5. servers -----------------------------------------------------------------------------------------------
log "model server and fake GitHub"
GH_PORT=$(free_port)
RECORD="$WORK/github-record.json"
fake_args=(--port "$GH_PORT" --record "$RECORD" --repository "$REPOSITORY" --token "$FAKE_TOKEN")
# Opening a pull request needs its head branch pushed, as on GitHub: the fake looks in the bare remote.
if [ "$NIGHTLY" = 1 ]; then fake_args+=(--git-remote "$REMOTE"); fi
"$PY" -m tests.fake_github "${fake_args[@]}" >"$WORK/fake-github.log" 2>&1 &
PIDS+=($!)
wait_for 30 "fake GitHub" test -s "$RECORD"

MODEL_PORT=$(free_port)
MODEL_NAME_FILE="$WORK/model-name"
# tests/openai_server.py runs `transformers serve` over the converted SmolLM2 folder; this launcher holds it
# open until the stage ends (SIGTERM leaves the context manager, which stops the server).
"$PY" - "$MODEL_PORT" "$MODEL_NAME_FILE" >"$WORK/model-server.log" 2>&1 <<'EOF' &
import signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
from gradgate.models.local import converted_model_dir
from tests.openai_server import start_openai_server
with start_openai_server(converted_model_dir("smollm2-135m-instruct"), int(sys.argv[1]), timeout=300) as server:
    Path(sys.argv[2]).write_text(server.model, encoding="utf-8")
    while True:
        time.sleep(3600)
EOF
MODEL_PID=$!
PIDS+=("$MODEL_PID")
model_ready() {
    kill -0 "$MODEL_PID" 2>/dev/null || { tail -n 30 "$WORK/model-server.log" >&2; fail "the model server exited"; }
    test -s "$MODEL_NAME_FILE"
}
wait_for 360 "model server" model_ready
MODEL="openai/$(cat "$MODEL_NAME_FILE")"  # the server answers requests that name its folder
echo "model $MODEL at http://127.0.0.1:$MODEL_PORT/v1"
stage_done "servers up"

# -- 6. running the action ------------------------------------------------------------------------------------
GH_DIR="$WORK/github"
mkdir -p "$GH_DIR/workflow" "$GH_DIR/file_commands" "$GH_DIR/home"

write_event() {  # write_event pull_request BASE HEAD | write_event schedule: the payload at GITHUB_EVENT_PATH
    "$PY" - "$GH_DIR/workflow/event.json" "$REPOSITORY" "$PR_NUMBER" "$@" <<'EOF'
import json, sys
path, repository, number, kind, *shas = sys.argv[1:]
repo = {"full_name": repository, "name": repository.split("/")[1], "owner": {"login": repository.split("/")[0]},
        "default_branch": "main"}
if kind == "pull_request":
    base, head = shas
    event = {
        "action": "synchronize",
        "number": int(number),
        "repository": repo,
        "pull_request": {
            "number": int(number),
            "base": {"ref": "main", "sha": base, "repo": repo},
            "head": {"ref": "reword-triage", "sha": head, "repo": repo},
        },
    }
else:
    event = {"schedule": "17 3 * * *", "repository": repo, "workflow": ".github/workflows/gradgate-tune.yml"}
with open(path, "w", encoding="utf-8") as handle:
    json.dump(event, handle)
EOF
}

action_inputs() {  # action_inputs PR_BASE_SHA KEY=VALUE...: sets INPUTS
    # The INPUT_* variables exactly as GitHub would set them: every action.yml default, with its two expressions
    # evaluated (the base sha is empty outside pull_request events), then the workflow's `with:` values.
    # NUL-separated because the env input spans lines.
    INPUTS=()
    while IFS= read -r -d '' pair; do INPUTS+=("$pair"); done < <("$PY" - "$FAKE_TOKEN" "$@" <<'EOF'
import sys
import yaml
token, base, *given = sys.argv[1:]
expressions = {"${{ github.event.pull_request.base.sha }}": base, "${{ github.token }}": token}
values = {name: expressions.get(str(spec.get("default", "")), str(spec.get("default", "")))
          for name, spec in yaml.safe_load(open("action.yml"))["inputs"].items()}
for pair in given:
    name, _, value = pair.partition("=")
    assert name in values, f"action.yml has no input {name!r}"
    values[name] = value.replace("\\n", "\n")
for name, value in values.items():
    sys.stdout.write(f"INPUT_{name.replace(' ', '_').upper()}={value}\0")
EOF
    )
    ((${#INPUTS[@]})) || fail "could not read the inputs of action.yml"
}

run_action() {  # run_action LABEL WORKSPACE [BUILDAH RUN ARGS...]: one workflow step as GitHub's runner starts it
    local label=$1 workspace=$2
    shift 2
    : >"$GH_DIR/file_commands/output"
    : >"$GH_DIR/file_commands/summary"
    buildah "${STORE[@]}" rm "$CONTAINER" >/dev/null 2>&1 || true
    buildah "${STORE[@]}" from --name "$CONTAINER" "$IMAGE" >/dev/null
    log "run the action ($label)"
    set +e
    # buildah's --env drops names with dashes (INPUT_BASE-REF), which Docker passes; env(1) sets any name.
    buildah "${STORE[@]}" run --isolation chroot --workingdir /github/workspace \
        --volume "$workspace:/github/workspace" \
        --volume "$GH_DIR/workflow:/github/workflow" \
        --volume "$GH_DIR/file_commands:/github/file_commands" \
        --volume "$GH_DIR/home:/github/home" \
        -e HOME=/github/home -e CI=true -e GITHUB_ACTIONS=true \
        -e GITHUB_WORKSPACE=/github/workspace -e GITHUB_EVENT_PATH=/github/workflow/event.json \
        -e GITHUB_OUTPUT=/github/file_commands/output -e GITHUB_STEP_SUMMARY=/github/file_commands/summary \
        -e GITHUB_REPOSITORY="$REPOSITORY" -e GITHUB_REPOSITORY_OWNER="${REPOSITORY%%/*}" \
        -e GITHUB_API_URL="http://127.0.0.1:$GH_PORT" -e GITHUB_SERVER_URL=https://github.com \
        -e GITHUB_RUN_ID=4242 -e GITHUB_RUN_ATTEMPT=1 -e GITHUB_ACTOR=octocat \
        "$@" "$CONTAINER" -- /usr/bin/env "${INPUTS[@]}" "${ENTRYPOINT[@]}" 2>&1 | tee "$WORK/action-$label.log"
    RC=${PIPESTATUS[0]}
    set -e
    echo "exit code: $RC"
    echo "--- GITHUB_OUTPUT"; cat "$GH_DIR/file_commands/output"
    echo "--- step summary (head)"; head -n 30 "$GH_DIR/file_commands/summary"
    head -n 1 "$WORK/action-$label.log" | grep -qx "::add-mask::$FAKE_TOKEN" \
        || fail "the token was not masked before anything else was printed"
    if tail -n +3 "$WORK/action-$label.log" | grep -qF -e "$FAKE_TOKEN" -e "$FAKE_KEY"; then
        fail "a secret appears in the action's output"
    fi
    if grep -qF -e "$FAKE_TOKEN" -e "$FAKE_KEY" "$GH_DIR/file_commands/summary" "$RECORD"; then
        fail "a secret reached the step summary or GitHub"
    fi
    cp "$GH_DIR/file_commands/output" "$WORK/output-$label"
}

check_record() {  # the fake GitHub's record: no violation, every request with the token; prints the requests
    "$PY" - "$RECORD" "$@" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1], encoding="utf-8"))
requests, violations = data["requests"], data["violations"]
seen = int(sys.argv[2]) if len(sys.argv) > 2 else 0
for r in requests[seen:]:
    print(f"  {r['method']:6} {r['path']} -> {r['status']}")
if violations:
    sys.exit("FAIL: GitHub API spec violations:\n  " + "\n  ".join(map(str, violations)))
if not all(r["authorized"] for r in requests):
    sys.exit("FAIL: a GitHub request carried no token")
EOF
}
requests_so_far() { "$PY" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["requests"]))' "$RECORD"; }

# -- 6a. the pull request gate (mode: check) --------------------------------------------------------------------
check_comments() {  # check_comments CREATES UPDATES: the sticky comment on the pull request
    check_record "$SEEN"
    "$PY" - "$RECORD" "$REPOSITORY" "$PR_NUMBER" "$1" "$2" <<'EOF'
import json, re, sys
record, repository, number, creates, updates = sys.argv[1:]
requests = json.load(open(record, encoding="utf-8"))["requests"]
comments = f"/repos/{repository}/issues/{number}/comments"
created = [r for r in requests if r["method"] == "POST" and r["path"] == comments and r["status"] == 201]
updated = [r for r in requests if r["method"] == "PATCH"
           and re.fullmatch(rf"/repos/{repository}/issues/comments/\d+", r["path"]) and r["status"] == 200]
if (len(created), len(updated)) != (int(creates), int(updates)):
    sys.exit(f"FAIL: expected {creates} comment created and {updates} updated, got {len(created)} and "
             f"{len(updated)}")
print(f"GitHub: {len(requests)} requests, {len(created)} comment created, {len(updated)} updated, no violations")
EOF
}

write_event pull_request "$BASE_SHA" "$HEAD_SHA"
action_inputs "$BASE_SHA" mode=check prompts="$PROMPT_ID" task-model="$MODEL" judge-model="$MODEL" \
    api-base="http://127.0.0.1:$MODEL_PORT/v1" env="OPENAI_API_KEY=$FAKE_KEY\\n" comment=true
CHECK_ENV=(-e GITHUB_EVENT_NAME=pull_request -e GITHUB_SHA="$HEAD_SHA" -e GITHUB_REF="refs/pull/$PR_NUMBER/merge"
    -e GITHUB_REF_NAME="$PR_NUMBER/merge" -e GITHUB_BASE_REF=main -e GITHUB_HEAD_REF=reword-triage
    -e GITHUB_JOB=gate -e GITHUB_WORKFLOW="gradgate check")
check_run() {  # check_run LABEL CREATES UPDATES
    SEEN=$(requests_so_far)
    run_action "$1" "$REPO" "${CHECK_ENV[@]}"
    case $RC in
        0 | 1) ;;
        *) fail "the action exited $RC, not a verdict (0 ok, 1 regression)" ;;
    esac
    grep -Eq '^verdict(=|<<)' "$GH_DIR/file_commands/output" || fail "GITHUB_OUTPUT has no verdict"
    [ -s "$GH_DIR/file_commands/summary" ] || fail "the step summary is empty"
    check_comments "$2" "$3"
}
if [ "$CHECK" = 1 ]; then
    check_run check 1 0
    stage_done "check (cold)"
    if [ "$RERUN" = 1 ]; then
        # A re-run of the same pull request must update the sticky comment, never add a second one.
        check_run check-rerun 1 1
        stage_done "check (rerun)"
    fi
fi

# -- 6b. the nightly tuning job (mode: optimize, open-pr) -------------------------------------------------------
check_nightly() {  # check_nightly LABEL: outputs, artifact, pull request and remote after one tuning run
    check_record "$SEEN"
    "$PY" - "$LABEL_OUTPUT" "$NIGHTLY_REPO" "$RECORD" "$SEEN" "$REPOSITORY" "$REMOTE" "$MAIN_SHA" \
        "$WORK/nightly-state.json" "$PROMPT_PATH" "$FAKE_TOKEN" "$FAKE_KEY" <<'EOF'
import json, re, subprocess, sys
from pathlib import Path
(output_file, repo, record, seen, repository, remote, main_sha, state_file, prompt_path,
 *secrets) = sys.argv[1:]
repo, seen, state_path = Path(repo), int(seen), Path(state_file)
state = json.loads(state_path.read_text()) if state_path.exists() else {"pr": None}

def fail(why):
    sys.exit(f"FAIL: {why}")

# GITHUB_OUTPUT: name=value lines and name<<DELIMITER blocks.
outputs, lines = {}, open(output_file, encoding="utf-8").read().splitlines()
while lines:
    line = lines.pop(0)
    if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
        name, delimiter = line.split("<<", 1)
        end = lines.index(delimiter)
        outputs[name], lines = "\n".join(lines[:end]), lines[end + 1:]
    elif "=" in line:
        name, value = line.split("=", 1)
        outputs[name] = value
for name in ("pr-number", "pr-url", "report-path"):
    if name not in outputs:
        fail(f"GITHUB_OUTPUT has no {name} (got {sorted(outputs)})")

# The artifact the workflow uploads: report.md and result.json, at report-path relative to the repository.
report = Path(outputs["report-path"])
if report.is_absolute():
    fail(f"report-path is absolute ({report}); action.yml promises a path relative to the repository")
report = repo / report
result_path = report.with_name("result.json")
for path in (report, result_path):
    if not path.is_file() or path.stat().st_size == 0:
        fail(f"the artifact lacks {path.relative_to(repo)}")
    text = path.read_text(encoding="utf-8")
    if any(secret in text for secret in secrets):
        fail(f"a secret is in {path.relative_to(repo)}")
result = json.loads(result_path.read_text(encoding="utf-8"))
print(f"report: {report.relative_to(repo)} ({report.stat().st_size} bytes); message: {result['message']}")
if not result["results"]:
    fail(f"the tuning job produced no result: {result['message']}")

requests = json.load(open(record, encoding="utf-8"))["requests"]
pulls = f"/repos/{repository}/pulls"
created_all = [r for r in requests if r["method"] == "POST" and r["path"] == pulls and r["status"] == 201]
created_now = [r for r in requests[seen:] if r["method"] == "POST" and r["path"] == pulls]
updated_now = [r for r in requests[seen:] if r["method"] == "PATCH" and r["path"].startswith(pulls + "/")]

def git(*args):
    return subprocess.run(["git", "-C", remote, *args], capture_output=True, text=True, check=False)

if git("rev-parse", "refs/heads/main").stdout.strip() != main_sha:
    fail("the tuning job changed main on the remote")
if outputs["pr-number"]:
    number = int(outputs["pr-number"])
    if outputs["pr-url"] != f"https://github.com/{repository}/pull/{number}":
        fail(f"pr-url {outputs['pr-url']!r} is not the URL of pull request #{number}")
    if result.get("pr_number") != number or result.get("pr_url") != outputs["pr-url"]:
        fail(f"result.json names pull request {result.get('pr_number')} {result.get('pr_url')}, "
             f"the outputs #{number}")
    if len(created_all) != 1:
        fail(f"expected exactly one pull request opened in all, got {len(created_all)}")
    if state["pr"] is None:
        if len(created_now) != 1:
            fail("a pull request number came back, but this run opened none")
    else:
        if number != state["pr"]:
            fail(f"the rerun answered pull request #{number}, the first run #{state['pr']}")
        if created_now or len(updated_now) != 1 or updated_now[0]["path"] != f"{pulls}/{number}":
            fail(f"the rerun should update #{number} and open nothing: {len(created_now)} opened, "
                 f"{[r['path'] for r in updated_now]} updated")
    state["pr"] = number
    branch = created_all[0]["body"]["head"].rpartition(":")[2]
    if not branch.startswith("gradgate/tune-"):
        fail(f"the pull request's head is {branch!r}, not a gradgate/tune-* branch")
    # The branch the pull request shows: on the remote, gradgate's commit on top of main, one prompt changed.
    tip = git("rev-parse", "--verify", f"refs/heads/{branch}").stdout.strip()
    if not tip:
        fail(f"{branch} is not on the remote")
    if git("rev-parse", f"{tip}^").stdout.strip() != main_sha:
        fail(f"{branch} is not one commit on top of main")
    changed = git("diff", "--name-only", main_sha, tip).stdout.split()
    if changed != [prompt_path]:
        fail(f"{branch} changes {changed}, expected only {prompt_path}")
    commit = git("log", "-1", "--format=%ce%n%(trailers:key=Gradgate-Run,valueonly)", tip).stdout.split()
    if not commit or commit[0] != "gradgate@users.noreply.github.com" or len(commit) < 2:
        fail(f"the tuning commit lacks gradgate's committer or its Gradgate-Run trailer: {commit}")
    diff = git("diff", main_sha, tip).stdout
    if any(secret in diff for secret in secrets):
        fail("a secret was pushed")
    print(f"pull request #{number} {'opened' if created_now else 'updated'}; {branch} at {tip[:12]}")
else:
    if outputs["pr-url"]:
        fail(f"pr-url is {outputs['pr-url']!r} without a pr-number")
    if created_now or updated_now:
        fail("pull requests were opened or updated, but the outputs name none")
    if "no pull request" not in result["message"]:
        fail(f"no pull request, and the report does not say why: {result['message']!r}")
    if state["pr"] is None and (created_all or git("for-each-ref", "refs/heads/gradgate/").stdout.strip()):
        fail("nothing improved, yet a pull request or a tuning branch exists")
    print("no pull request: nothing beat the current prompt on the test split")
state_path.write_text(json.dumps(state))
EOF
}

seed_remote() {  # the repository on "GitHub": a bare repository (the job's `origin`, at the same path inside the
    # container) whose main holds examples/, set up for a short tuning run
    local seed_repo="$WORK/nightly-seed"
    new_example_repo "$seed_repo"
    # * The prompt is cut down to its input variables, its instructions moved into the suite's description, so
    #   the job has something to fix: the mutation library's role line ("You are a careful expert. Your task:
    #   <the suite's description>") brings them back and can win on the test split, opening the pull request.
    #   Whether the 135M model's replies bear that out is still up to chance; check_nightly asserts either way.
    # * The examples' suites are sized for the gate; the test split gets half the items so a win can be shown
    #   (McNemar at alpha 0.1 needs 5 test items), and the search fits a small call budget: one GRAD-SUM
    #   iteration of one editor candidate and every mutation, scored on dev by successive halving.
    # * models.editor: with the api-base input, GRADGATE_API_BASE pins the editor role to gradgate.yaml's
    #   optimizer model before --optimizer-model applies (core/config.py apply_env_overrides), so the
    #   optimizer-model input never reaches the editor; naming the editor here works around that.
    "$PY" - "$seed_repo" "$PROMPT_PATH" "$MODEL" <<'EOF'
import re, sys
from pathlib import Path
import yaml
repo, prompt_path, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
prompt = repo / prompt_path
head, body = re.match(r"(---\n.*?\n---\n)(.*)", prompt.read_text(encoding="utf-8"), re.S).groups()
names = list(dict.fromkeys(re.findall(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*}}", body)))
if not names:
    sys.exit(f"FAIL: {prompt_path} has no {{{{variable}}}} to keep")
prompt.write_text(head + "\n".join(f"{{{{{name}}}}}" for name in names) + "\n", encoding="utf-8")
front = yaml.safe_load(head.strip().strip("-")) or {}
suite_path = repo / str(front.get("suite") or f"evals/{front.get('id', prompt.stem)}.yaml")
suite = yaml.safe_load(suite_path.read_text(encoding="utf-8"))
task = re.sub(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*}}", r"the given \1", " ".join(body.split()))
suite["description"] = task
suite_path.write_text(yaml.safe_dump(suite, sort_keys=False, allow_unicode=True), encoding="utf-8")
print(f"nightly prompt: {prompt_path} cut to its variables; {suite_path.relative_to(repo)} description: {task}")
path = repo / "gradgate.yaml"
config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
config.setdefault("models", {})["editor"] = model
optimize = config.setdefault("optimize", {})
optimize["split"] = {"train": 0.25, "dev": 0.25, "test": 0.5}
optimize["gradsum"] = {"iterations": 1, "beam_width": 1, "train_batch": 3, "candidates_per_prompt": 1,
                       "mutations": 12, "max_gradient_items": 2, "gradient_max_tokens": 120, "edit_max_tokens": 200}
path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
EOF
    git_in "$seed_repo" commit -q -am "a bare prompt, and tuning settings for CI"
    git init -q --bare -b main "$REMOTE"
    git_in "$seed_repo" push -q "$REMOTE" main
    MAIN_SHA=$(git -C "$REMOTE" rev-parse refs/heads/main)
    rm -rf "$seed_repo"
    echo "nightly: $REMOTE main $MAIN_SHA"
}

nightly_run() {  # nightly_run LABEL: the tuning job, in a fresh checkout of the remote
    local label=$1 previous=${NIGHTLY_REPO:-}
    NIGHTLY_REPO="$WORK/$label"
    git clone -q "$REMOTE" "$NIGHTLY_REPO"
    if [ -d "$previous/.gradgate/cache" ]; then  # restored as actions/cache would restore it
        mkdir -p "$NIGHTLY_REPO/.gradgate"
        cp -a "$previous/.gradgate/cache" "$NIGHTLY_REPO/.gradgate/"
    fi
    chown -R 1001:1001 "$NIGHTLY_REPO"
    SEEN=$(requests_so_far)
    run_action "$label" "$NIGHTLY_REPO" --volume "$REMOTE:$REMOTE" \
        -e GITHUB_EVENT_NAME=schedule -e GITHUB_SHA="$MAIN_SHA" -e GITHUB_REF=refs/heads/main \
        -e GITHUB_REF_NAME=main -e GITHUB_BASE_REF= -e GITHUB_HEAD_REF= -e GITHUB_JOB=tune \
        -e GITHUB_WORKFLOW="gradgate tune"
    [ "$RC" = 0 ] || fail "the tuning job exited $RC"
    [ -s "$GH_DIR/file_commands/summary" ] || fail "the step summary is empty"
    LABEL_OUTPUT="$WORK/output-$label"
    check_nightly "$label"
}

if [ "$NIGHTLY" = 1 ]; then
    seed_remote
    write_event schedule
    action_inputs "" mode=optimize prompts="$PROMPT_ID" methods=gradsum budget-calls="$BUDGET_CALLS" \
        budget-seconds=900 task-model="$MODEL" judge-model="$MODEL" optimizer-model="$MODEL" \
        api-base="http://127.0.0.1:$MODEL_PORT/v1" env="OPENAI_API_KEY=$FAKE_KEY\\n" open-pr=true
    nightly_run nightly
    stage_done "nightly (cold)"
    if [ "$RERUN" = 1 ]; then
        # The next night: a fresh checkout finds the tuning branch and its pull request, and updates them.
        nightly_run nightly-rerun
        stage_done "nightly (rerun)"
    fi
fi

# -- 7. the EXTRAS=local image --------------------------------------------------------------------------------
torch_wheel_dir() {  # a directory holding torch's CPU wheel for the image's Python 3.11, or nothing
    local dir
    for dir in ${TORCH_WHEEL_DIR:-} ${PIP_FIND_LINKS:-} $("$PY" -m pip config get global.find-links 2>/dev/null); do
        dir=${dir#file://}
        if compgen -G "$dir/torch-$TORCH_VERSION+cpu-cp311-cp311-manylinux*_x86_64.whl" >/dev/null; then
            echo "$dir"
            return
        fi
    done
}
WHEELS=""
if [ "$LOCAL" != 0 ]; then WHEELS=$(torch_wheel_dir); fi
if [ "$LOCAL" = 0 ]; then
    echo "SKIP the EXTRAS=local image (LOCAL=0)"
elif [ -z "$WHEELS" ]; then
    # PyPI's torch for Linux x86_64 is the CUDA build: 527 MB plus 1.7 GB of nvidia-* wheels.
    [ "$LOCAL" = 1 ] && fail "no torch $TORCH_VERSION CPU wheel in pip's find-links directories or TORCH_WHEEL_DIR"
    echo "SKIP the EXTRAS=local image: no torch $TORCH_VERSION CPU wheel on this machine (set TORCH_WHEEL_DIR)"
else
    # The servers are no longer needed: their cores go to the build.
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    PIDS=()
    build_image "$LOCAL_IMAGE" local --volume "$WHEELS:/tmp/torch-wheels:ro" \
        --build-arg TORCH_FIND_LINKS=/tmp/torch-wheels
    stage_done "build EXTRAS=local image"
    LOCAL_REPO="$WORK/local"
    new_example_repo "$LOCAL_REPO"
    log "gradgate eval in the EXTRAS=local image (embedded model, no server)"
    buildah "${STORE[@]}" rm "$CONTAINER" >/dev/null 2>&1 || true
    buildah "${STORE[@]}" from --name "$CONTAINER" "$LOCAL_IMAGE" >/dev/null
    # No server and no network use: torch must be the CPU build, the model is read from its wheel in process.
    # shellcheck disable=SC2016  # $1 is expanded by the container's sh
    buildah "${STORE[@]}" run --isolation chroot --workingdir /github/workspace \
        --volume "$LOCAL_REPO:/github/workspace" -e HOME=/github/home "$CONTAINER" -- sh -euc '
        /opt/gradgate/bin/python -c "import torch; assert torch.version.cuda is None, torch.__version__
print(\"torch\", torch.__version__)"
        /opt/gradgate/bin/gradgate eval --prompt "$1" --out gradgate-out' sh "$PROMPT_ID" 2>&1 \
        | tee "$WORK/local-eval.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || fail "gradgate eval in the EXTRAS=local image exited $rc"
    "$PY" - "$LOCAL_REPO/gradgate-out/results.json" "$PROMPT_ID" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1], encoding="utf-8"))
prompts = {p["id"]: p for p in data["prompts"]}
if not data["complete"] or list(prompts) != [sys.argv[2]]:
    sys.exit(f"FAIL: results.json is incomplete or names other prompts: {list(prompts)} ({data['error']})")
result = prompts[sys.argv[2]]
if result["n_scored"] != result["n_items"] or result["mean_score"] is None:
    sys.exit(f"FAIL: {result['n_scored']} of {result['n_items']} items scored")
print(f"results.json: {sys.argv[2]}, {result['n_scored']}/{result['n_items']} items scored, "
      f"mean score {result['mean_score']:.3f}")
EOF
    buildah "${STORE[@]}" images "$LOCAL_IMAGE"
    stage_done "eval in EXTRAS=local image"
fi

log "timings"
TIMINGS_SHOWN=1
printf '%s\n' "${TIMINGS[@]}"
printf '%-34s %5ss\n' "total" $(($(date +%s) - CI_START))
echo "container stage: OK"
