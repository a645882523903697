# Stand-in for python:3.11-slim (docker/local-images.sh): Debian bookworm's python3 is 3.11.
ARG BASE=xc-local/debian:bookworm
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip python-is-python3 \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# This machine's CA bundle, so that pip (here and in every venv made from this python) reaches
# the package index through whatever the machine trusts.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf
ENV LANG=C.UTF-8
CMD ["python3"]
