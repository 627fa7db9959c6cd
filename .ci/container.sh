#!/usr/bin/env bash
# CI stage "container": build the action's image without a Docker engine and run its entrypoint the way GitHub
# runs a container action, against real servers on loopback:
#   * the image is built from ./Dockerfile with buildah (vfs storage, chroot isolation, no pulls); the base
#     image debian:bookworm-slim is bootstrapped with debootstrap when it is not in local storage yet;
#   * a temporary git repository made from examples/ (base commit + a head commit that edits one prompt) is
#     mounted at /github/workspace, owned by another uid as on a runner;
#   * task and judge model: the embedded SmolLM2 served by `transformers serve` (OpenAI-compatible) on loopback;
#   * GitHub: tests/fake_github.py, which checks every request against GitHub's OpenAPI description.
# It then asserts a verdict exit code (0 or 1), a `verdict` output, a job summary, exactly one sticky comment
# (also after a rerun of the same pull request) and zero spec violations. Rerunnable; needs root.
#
# Environment: EXTRAS (image extras, default none), KEEP_WORK=1 keeps the temporary directory for debugging,
# RERUN=0 skips the second run, PYTHON (host interpreter with gradgate's test dependencies, default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
IMAGE=localhost/gradgate-action:ci
BASE_IMAGE=docker.io/library/debian:bookworm-slim
CONTAINER=gradgate-ci-run
REPOSITORY=octo-org/prompt-repo
PR_NUMBER=7
FAKE_TOKEN=ghs_gradgateCiFakeToken0000000000000
FAKE_KEY=sk-gradgate-ci-fake-key
RERUN=${RERUN:-1}
STORE=(--storage-driver vfs)
export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gradgate-ci.XXXXXX")
PIDS=()
TIMINGS=()
cleanup() {
    local pid
    if ((${#TIMINGS[@]})) && [ -z "${TIMINGS_SHOWN:-}" ]; then printf '\ntimings so far\n'; printf '%s\n' "${TIMINGS[@]}"; fi
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
log "build $IMAGE"
build_args=(--build-arg "EXTRAS=${EXTRAS:-}")
ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then  # pip inside the build must trust what the host trusts
    build_args+=(--volume "$ca:/etc/ssl/certs/host-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)
fi
old_image=$(buildah "${STORE[@]}" images --quiet --no-trunc "$IMAGE" 2>/dev/null || true)
# --layers keeps the dependency layer between runs; only a change to pyproject.toml rebuilds it.
buildah "${STORE[@]}" bud --isolation chroot --pull=never --layers --quiet -t "$IMAGE" "${build_args[@]}" \
    -f Dockerfile . >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; fail "image build"; }
new_image=$(buildah "${STORE[@]}" images --quiet --no-trunc "$IMAGE")
if [ -n "$old_image" ] && [ "$old_image" != "$new_image" ]; then  # the previous run's image, now untagged
    buildah "${STORE[@]}" rmi "$old_image" >/dev/null 2>&1 || true
fi
buildah "${STORE[@]}" images "$IMAGE"
mapfile -t ENTRYPOINT < <(buildah "${STORE[@]}" inspect --type image "$IMAGE" | "$PY" -c '
import json, sys
config = json.load(sys.stdin)["OCIv1"]["config"]
assert not config.get("User") and not config.get("WorkingDir"), "GitHub needs root and no WORKDIR"
print("\n".join(config["Entrypoint"]))')
((${#ENTRYPOINT[@]} > 1)) || fail "the image has no exec-form ENTRYPOINT"
echo "entrypoint: ${ENTRYPOINT[*]}"
stage_done "build image"

# -- 4. example repository ------------------------------------------------------------------------------------
log "example repository"
REPO="$WORK/workspace"
mkdir -p "$REPO"
cp -a examples/. "$REPO/"
rm -rf "$REPO/workflows"
# capitals: 24 generated replies of at most 16 tokens, so the run stays short even on 2 busy cores.
PROMPT_ID=capitals
PROMPT_FILE="$REPO/prompts/$PROMPT_ID.md"
[ -f "$PROMPT_FILE" ] || fail "examples/prompts/$PROMPT_ID.md is missing"
git_ci() { git -C "$REPO" -c user.name="gradgate ci" -c user.email=ci@gradgate.invalid "$@"; }
git_ci init -q -b main
git_ci add -A
git_ci commit -q -m "base"
BASE_SHA=$(git_ci rev-parse HEAD)
git_ci checkout -q -b reword-triage
# The head commit changes one prompt's wording, so check has a base/head pair to compare.
# Append to the prompt's last line: robust to the examples' wording, which is tuned over time.
sed -i '$ s/[[:space:]]*$/ Keep the answer short./' "$PROMPT_FILE"
git_ci diff --quiet && fail "the head edit did not change $PROMPT_FILE"
git_ci commit -q -am "head: shorter instructions"
HEAD_SHA=$(git_ci rev-parse HEAD)
# On a runner the workspace belongs to the runner's user, not to the container's root: git refuses such a
# repository unless it is marked safe, which the entrypoint must do.
chown -R 1001:1001 "$REPO"
echo "base $BASE_SHA head $HEAD_SHA"
stage_done "example repository"

# -- 5. servers -----------------------------------------------------------------------------------------------
log "model server and fake GitHub"
GH_PORT=$(free_port)
RECORD="$WORK/github-record.json"
if true; then  # the fake checks requests against the committed subset (tests/github_spec/)
    "$PY" -m tests.fake_github --port "$GH_PORT" --record "$RECORD" --repository "$REPOSITORY" \
        >"$WORK/fake-github.log" 2>&1 &
    PIDS+=($!)
    wait_for 30 "fake GitHub" test -s "$RECORD"
    COMMENT=true
else
    # Without GitHub's OpenAPI description there is no spec-checked server: run without the comment.
    echo "SKIP GitHub checks: no OpenAPI description at $GITHUB_SPEC (set GRADGATE_GITHUB_SPEC)"
    echo '{"requests": [], "violations": []}' >"$RECORD"
    COMMENT=false
fi

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

# -- 6. run the action ----------------------------------------------------------------------------------------
GH_DIR="$WORK/github"
mkdir -p "$GH_DIR/workflow" "$GH_DIR/file_commands" "$GH_DIR/home"
"$PY" - "$GH_DIR/workflow/event.json" "$REPOSITORY" "$PR_NUMBER" "$BASE_SHA" "$HEAD_SHA" <<'EOF'
import json, sys
path, repository, number, base, head = sys.argv[1:]
repo = {"full_name": repository, "name": repository.split("/")[1], "owner": {"login": repository.split("/")[0]}}
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
with open(path, "w", encoding="utf-8") as handle:
    json.dump(event, handle)
EOF

# The INPUT_* variables exactly as GitHub would set them: every action.yml default, with its two expressions
# evaluated, then this workflow's `with:` values. NUL-separated because the env input spans lines.
INPUTS=()
while IFS= read -r -d '' pair; do INPUTS+=("$pair"); done < <(
    "$PY" - "$BASE_SHA" "$FAKE_TOKEN" "$FAKE_KEY" "$MODEL_PORT" "$PROMPT_ID" "$COMMENT" "$MODEL" <<'EOF'
import sys
import yaml
base, token, key, port, prompt, comment, model = sys.argv[1:]
expressions = {"${{ github.event.pull_request.base.sha }}": base, "${{ github.token }}": token}
values = {name: expressions.get(str(spec.get("default", "")), str(spec.get("default", "")))
          for name, spec in yaml.safe_load(open("action.yml"))["inputs"].items()}
values.update({
    "mode": "check",
    "prompts": prompt,
    "task-model": model,
    "judge-model": model,
    "api-base": f"http://127.0.0.1:{port}/v1",
    "env": f"OPENAI_API_KEY={key}\n",
    "comment": comment,
})
for name, value in values.items():
    sys.stdout.write(f"INPUT_{name.replace(' ', '_').upper()}={value}\0")
EOF
)

run_action() {  # run_action LABEL: one workflow step, as GitHub's runner starts it
    local label=$1 rc
    : >"$GH_DIR/file_commands/output"
    : >"$GH_DIR/file_commands/summary"
    buildah "${STORE[@]}" rm "$CONTAINER" >/dev/null 2>&1 || true
    buildah "${STORE[@]}" from --name "$CONTAINER" "$IMAGE" >/dev/null
    log "run the action ($label)"
    set +e
    # buildah's --env drops names with dashes (INPUT_BASE-REF), which Docker passes; env(1) sets any name.
    buildah "${STORE[@]}" run --isolation chroot --workingdir /github/workspace \
        --volume "$REPO:/github/workspace" \
        --volume "$GH_DIR/workflow:/github/workflow" \
        --volume "$GH_DIR/file_commands:/github/file_commands" \
        --volume "$GH_DIR/home:/github/home" \
        -e HOME=/github/home -e CI=true -e GITHUB_ACTIONS=true \
        -e GITHUB_WORKSPACE=/github/workspace \
        -e GITHUB_EVENT_NAME=pull_request -e GITHUB_EVENT_PATH=/github/workflow/event.json \
        -e GITHUB_OUTPUT=/github/file_commands/output -e GITHUB_STEP_SUMMARY=/github/file_commands/summary \
        -e GITHUB_REPOSITORY="$REPOSITORY" -e GITHUB_REPOSITORY_OWNER="${REPOSITORY%%/*}" \
        -e GITHUB_API_URL="http://127.0.0.1:$GH_PORT" -e GITHUB_SERVER_URL=https://github.com \
        -e GITHUB_SHA="$HEAD_SHA" -e GITHUB_REF="refs/pull/$PR_NUMBER/merge" \
        -e GITHUB_BASE_REF=main -e GITHUB_HEAD_REF=reword-triage -e GITHUB_RUN_ID=4242 -e GITHUB_RUN_ATTEMPT=1 \
        -e GITHUB_JOB=gate -e GITHUB_WORKFLOW="gradgate check" -e GITHUB_ACTOR=octocat \
        "$CONTAINER" -- /usr/bin/env "${INPUTS[@]}" "${ENTRYPOINT[@]}" 2>&1 | tee "$WORK/action-$label.log"
    rc=${PIPESTATUS[0]}
    set -e
    echo "exit code: $rc"
    echo "--- GITHUB_OUTPUT"; cat "$GH_DIR/file_commands/output"
    echo "--- step summary (head)"; head -n 30 "$GH_DIR/file_commands/summary"
    case $rc in
        0 | 1) ;;
        *) fail "the action exited $rc, not a verdict (0 ok, 1 regression)" ;;
    esac
    grep -Eq '^verdict(=|<<)' "$GH_DIR/file_commands/output" || fail "GITHUB_OUTPUT has no verdict"
    [ -s "$GH_DIR/file_commands/summary" ] || fail "the step summary is empty"
    head -n 1 "$WORK/action-$label.log" | grep -qx "::add-mask::$FAKE_TOKEN" \
        || fail "the token was not masked before anything else was printed"
    if tail -n +3 "$WORK/action-$label.log" | grep -qF -e "$FAKE_TOKEN" -e "$FAKE_KEY"; then
        fail "a secret appears in the action's output"
    fi
    if grep -qF -e "$FAKE_TOKEN" -e "$FAKE_KEY" "$GH_DIR/file_commands/summary" "$RECORD"; then
        fail "a secret reached the step summary or GitHub"
    fi
}

check_github() {  # check_github CREATES UPDATES: the fake server's record
    [ "$COMMENT" = true ] || return 0
    "$PY" - "$RECORD" "$REPOSITORY" "$PR_NUMBER" "$1" "$2" <<'EOF'
import json, re, sys
record, repository, number, creates, updates = sys.argv[1:]
data = json.load(open(record, encoding="utf-8"))
requests, violations = data["requests"], data["violations"]
for r in requests:
    print(f"  {r['method']:6} {r['path']} -> {r['status']}")
if violations:
    sys.exit("FAIL: GitHub API spec violations:\n  " + "\n  ".join(map(str, violations)))
comments = f"/repos/{repository}/issues/{number}/comments"
created = [r for r in requests if r["method"] == "POST" and r["path"] == comments and r["status"] == 201]
updated = [r for r in requests if r["method"] == "PATCH"
           and re.fullmatch(rf"/repos/{repository}/issues/comments/\d+", r["path"]) and r["status"] == 200]
if (len(created), len(updated)) != (int(creates), int(updates)):
    sys.exit(f"FAIL: expected {creates} comment created and {updates} updated, got {len(created)} and "
             f"{len(updated)}")
if not all(r["authorized"] for r in requests):
    sys.exit("FAIL: a GitHub request carried no token")
print(f"GitHub: {len(requests)} requests, {len(created)} created, {len(updated)} updated, no violations")
EOF
}

run_action first
check_github 1 0
stage_done "action run (cold)"
if [ "$RERUN" = 1 ]; then
    # A re-run of the same pull request must update the sticky comment, never add a second one.
    run_action rerun
    check_github 1 1
    stage_done "action run (rerun)"
fi

log "timings"
TIMINGS_SHOWN=1
printf '%s\n' "${TIMINGS[@]}"
printf '%-34s %5ss\n' "total" $(($(date +%s) - CI_START))
echo "container stage: OK"
