module github.com/mazu-mesh/mazu-ztunnel

go 1.26.0
