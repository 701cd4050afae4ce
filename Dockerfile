# The agent-runner image (DESIGN §8). Build it with `ncl image build [--base IMAGE]`, which first builds
# wheels of the project and every dependency on the host into the build context's wheels/ folder, so this
# build needs no network: `ncl image build --base ncl-base:bookworm` works offline (scripts/build-base-image.sh).
# The base must provide python3 with venv; its glibc must be at least the host's (the wheels are the host's).
ARG BASE=python:3.11-slim-bookworm

# The dependencies in a venv without pip. ncl itself lives apart in /opt/ncl-app (a .pth file puts it on the
# path), so a change to ncl alone rebuilds one small layer and reuses this one.
FROM ${BASE} AS deps
COPY wheels/deps /wheels/deps
RUN python3 -m venv /opt/ncl \
 && /opt/ncl/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check /wheels/deps/*.whl \
 && /opt/ncl/bin/python -m pip uninstall -q -y --disable-pip-version-check pip setuptools \
 && /opt/ncl/bin/python -c "import sysconfig; open(sysconfig.get_paths()['purelib'] + '/ncl-app.pth', 'w').write('/opt/ncl-app\n')"

# ncl's wheel is pure Python: unpacking it is installing it (its dist-info comes along, so its metadata works).
FROM ${BASE} AS app
COPY wheels/project /wheels/project
RUN python3 -m zipfile -e /wheels/project/*.whl /opt/ncl-app && python3 -m compileall -q /opt/ncl-app

FROM ${BASE}
# A fixed non-root uid: a root host hands the session's writable files to it (host/runtimes/workspace.py).
RUN groupadd --gid 10001 ncl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin ncl \
 && test -e /usr/share/zoneinfo/America/New_York
COPY --from=deps /opt/ncl /opt/ncl
COPY --from=app /opt/ncl-app /opt/ncl-app
# The root filesystem is read-only at run time: bytecode is precompiled and HOME is the /tmp tmpfs.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp PATH=/opt/ncl/bin:/usr/local/bin:/usr/bin:/bin
RUN python -c "import agent_runner.runner, zoneinfo; zoneinfo.ZoneInfo('America/New_York')"
USER 10001:10001
WORKDIR /workspace
ENTRYPOINT ["/opt/ncl/bin/python", "-m", "agent_runner"]
CMD ["--session-dir", "/workspace"]
