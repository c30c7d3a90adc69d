// Command website-go is the Website example plugin in Go (behaviour:
// plugins/examples/WEBSITE.md): a Website parent gets a ConfigMap holding its page and an
// nginx Deployment serving it, and a status saying what was made.
//
// The logic is plain Go (this file), tested natively by go test against the golden cases the
// Rust example also passes (testdata/cases.json), byte for byte. The Extism exports live in
// exports_wasip1.go and exist only in the wasm build:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -ldflags="-s -w" -o website-go.wasm .
package main

import (
	"wasmop.dev/plugins/go/wasmop"
)

const defaultImage = "nginx:1.27"

// reconcile computes the desired children and status of one Website. It fails when
// spec.replicas is present but not a non-negative integer.
func reconcile(req *wasmop.ReconcileRequest) (wasmop.ReconcileResponse, error) {
	name := req.Name()
	spec := req.Spec()
	// Lenient on purpose (as the Rust example): a non-string image or content reads as unset.
	image, ok := wasmop.AsString(spec.Get("image"))
	if !ok {
		image = defaultImage
	}
	replicas, ok, err := spec.Uint64("replicas")
	if err != nil {
		return wasmop.ReconcileResponse{}, err
	}
	if !ok {
		if replicas, ok = wasmop.AsUint64(req.Config().Get("replicas")); !ok {
			replicas = 1
		}
	}
	content, _ := wasmop.AsString(spec.Get("content"))
	labels := map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "wasmop"}
	selector := func() map[string]any { return map[string]any{"app.kubernetes.io/name": name} }

	var out wasmop.ReconcileResponse
	container := map[string]any{
		"name":  "web",
		"image": image,
		"ports": []any{map[string]any{"containerPort": 80}},
	}
	podSpec := map[string]any{}
	if content != "" {
		cmName := name + "-content"
		container["volumeMounts"] = []any{map[string]any{"name": "content", "mountPath": "/usr/share/nginx/html"}}
		podSpec["volumes"] = []any{map[string]any{"name": "content", "configMap": map[string]any{"name": cmName}}}
		out.PushChild(wasmop.NewChild("v1", "ConfigMap", cmName).
			Labels(labels).
			Field("data", map[string]any{"index.html": content}))
	}
	podSpec["containers"] = []any{container}
	out.PushChild(wasmop.NewChild("apps/v1", "Deployment", name).Labels(labels).Field("spec", map[string]any{
		"replicas": replicas,
		"selector": map[string]any{"matchLabels": selector()},
		"template": map[string]any{
			"metadata": map[string]any{"labels": selector()},
			"spec":     podSpec,
		},
	}))

	var available uint64
	if d, ok := req.Child("apps/v1", "Deployment", name); ok {
		available, _ = wasmop.AsUint64(wasmop.Get(d, "status", "availableReplicas"))
	}
	made := make([]any, 0, len(out.Children))
	for _, c := range out.Children {
		made = append(made, wasmop.Reference(c))
		if _, exists := req.Existing(c); !exists {
			out.Normal("Created", "created "+wasmop.Reference(c))
		}
	}
	phase := "Progressing"
	if available >= replicas {
		phase = "Ready"
	}
	out.SetStatus(map[string]any{
		"phase":              phase,
		"observedGeneration": req.Generation(),
		"replicas":           replicas,
		"availableReplicas":  available,
		"children":           made,
	})
	return out, nil
}

// finalize has nothing outside the cluster to clean up.
func finalize(*wasmop.ReconcileRequest) (wasmop.ReconcileResponse, error) {
	return wasmop.Finalized(), nil
}

// main is required by the Go toolchain; the host never runs it (c-shared: the runtime is
// initialised by _initialize and the host calls the exports).
func main() {}
