module {{go_module}}

go 1.26

require wasmop.dev/plugins/go v0.0.0

require {{go_pdk_require}} // indirect

// The wasmop Go kit, vendored by the wasmop that generated this project (so it matches its
// ABI). wasmop.dev/plugins/go is not served by any module proxy: keep this replace.
replace wasmop.dev/plugins/go => ./third_party/wasmop-go
