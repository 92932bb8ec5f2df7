# Container images of mazu-ztunnel. One build stage compiles the three commands, and each image is
# a final stage named after its command, which the chart's image values use:
#
#   docker build --target mazu-ztunnel -t ghcr.io/mazu-mesh/mazu-ztunnel:0.1.0 .
#   docker build --target mazu-cni     -t ghcr.io/mazu-mesh/mazu-cni:0.1.0 .
#   docker build --target mazu-curator -t ghcr.io/mazu-mesh/mazu-curator:0.1.0 .
#
# `make images` runs all three with docker or podman. The Go version of the builder must match the
# go line of go.mod; deploy/ambient's TestDockerfile checks it.

FROM golang:1.26 AS build
WORKDIR /src
# Download modules in their own layer, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static binaries: the mazu-cni installer copies the plugin onto the host, where no Go runtime
# libraries can be assumed, and the runtime images have no C library. The eBPF object is committed
# (bpf/capture_bpfel.o) and embedded, so the build needs no clang.
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -buildvcs=false -ldflags='-s -w' -o /out/ \
    ./cmd/mazu-ztunnel ./cmd/mazu-cni ./cmd/mazu-curator

# The node agent. It runs as root with NET_ADMIN and SYS_ADMIN (the chart's DaemonSet sets both),
# so the image keeps distroless's default user, root.
FROM gcr.io/distroless/static-debian12 AS mazu-ztunnel
COPY --from=build /out/mazu-ztunnel /usr/local/bin/mazu-ztunnel
ENTRYPOINT ["/usr/local/bin/mazu-ztunnel"]

# The CNI plugin and its installer (`mazu-cni install`). The installer writes the host's CNI
# folders, which belong to root.
FROM gcr.io/distroless/static-debian12 AS mazu-cni
COPY --from=build /out/mazu-cni /usr/local/bin/mazu-cni
ENTRYPOINT ["/usr/local/bin/mazu-cni"]

# The curator and the witnesses (`mazu-curator serve` and `mazu-curator witness`). They need no
# privilege and run as distroless's nonroot user, UID 65532, as the chart also sets.
FROM gcr.io/distroless/static-debian12:nonroot AS mazu-curator
COPY --from=build /out/mazu-curator /usr/local/bin/mazu-curator
ENTRYPOINT ["/usr/local/bin/mazu-curator"]
