module github.com/mazu-mesh/mazu-ztunnel

go 1.26.0

require (
	go.etcd.io/bbolt v1.5.0
	golang.org/x/mod v0.43.0
)

require (
	github.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc // indirect
	github.com/pmezard/go-difflib v1.0.1-0.20181226105442-5d4384ee4fb2 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
