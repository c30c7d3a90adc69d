module wasmop.dev/plugins/examples/machine-go

go 1.26

require wasmop.dev/plugins/go v0.0.0

require github.com/extism/go-pdk v1.1.3 // indirect

// The Go PDK lives in this repository.
replace wasmop.dev/plugins/go => ../../go
