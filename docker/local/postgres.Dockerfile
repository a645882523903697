# Stand-in for postgres:16 (docker/local-images.sh): Debian bookworm's PostgreSQL 15, with an
# entrypoint that does what docker/compose.yaml relies on from the official image.
ARG BASE=xc-local/debian:bookworm
FROM ${BASE}
# No cluster of Debian's own (/etc/postgresql/15/main): the entrypoint makes one in PGDATA.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/run/postgresql /var/lib/postgresql/data \
 && chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql \
 && chmod 2777 /var/run/postgresql \
 && chmod 700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
# Smart shutdown would wait for the replicas' pooled connections; SIGINT is "fast".
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
