# hearth's server as a container image (docker-compose.yml builds it for its demo).
#   docker build -t hearth .
#   docker run -p 8080:8080 -e HEARTH_LISTEN=0.0.0.0:8080 -v hearth:/var/lib/hearth hearth
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY replicator replicator
COPY src src
RUN cargo build --release --locked --bin hearth

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/hearth /usr/local/bin/hearth
RUN useradd --system --home-dir /var/lib/hearth --create-home hearth
USER hearth
WORKDIR /var/lib/hearth
ENV HEARTH_DATA_DIR=/var/lib/hearth
EXPOSE 8080
ENTRYPOINT ["hearth"]
CMD ["serve"]
