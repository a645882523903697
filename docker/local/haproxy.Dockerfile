# Stand-in for haproxy:2.8 (docker/local-images.sh): Debian bookworm's HAProxy 2.6, like the
# official image non-root, in the foreground (master-worker), with its configuration at
# /usr/local/etc/haproxy/haproxy.cfg.
ARG BASE=xc-local/debian:bookworm
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /usr/local/etc/haproxy \
 && cp /etc/haproxy/haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg
# hadolint ignore=DL3066
USER haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
