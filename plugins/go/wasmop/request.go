package wasmop

// ChildKey is the key of a child kind in ReconcileRequest.Children: "Kind.apiVersion",
// e.g. "ConfigMap.v1" or "Deployment.apps/v1".
func ChildKey(apiVersion, kind string) string { return kind + "." + apiVersion }

// Name is the parent's metadata.name (empty only in hand-written test requests).
func (r *ReconcileRequest) Name() string {
	s, _ := AsString(Get(r.Object, "metadata", "name"))
	return s
}

// Namespace is the parent's metadata.namespace, when namespaced.
func (r *ReconcileRequest) Namespace() (string, bool) {
	return AsString(Get(r.Object, "metadata", "namespace"))
}

// Generation is the parent's metadata.generation, 0 when absent or not an integer.
func (r *ReconcileRequest) Generation() int64 {
	g, _ := AsInt64(Get(r.Object, "metadata", "generation"))
	return g
}

// Spec is the parent's spec; errors read "spec.<field> must be ...".
func (r *ReconcileRequest) Spec() Fields { return NewFields("spec", Get(r.Object, "spec")) }

// Status is the parent's current status (what the last reconcile wrote).
func (r *ReconcileRequest) Status() Fields { return NewFields("status", Get(r.Object, "status")) }

// Config is the WasmController's spec.plugin.config.
func (r *ReconcileRequest) Config() Fields {
	return NewFields("WasmController spec.plugin.config", r.Controller.Config)
}

// Child is the current child kind/name of apiVersion owned by this controller.
func (r *ReconcileRequest) Child(apiVersion, kind, name string) (any, bool) {
	c, ok := r.Children[ChildKey(apiVersion, kind)][name]
	return c, ok
}

// Existing is the current child with the apiVersion, kind and metadata.name of desired
// (a Child or a map[string]any).
func (r *ReconcileRequest) Existing(desired any) (any, bool) {
	if c, ok := desired.(Child); ok {
		desired = c.Object()
	}
	apiVersion, ok1 := AsString(Get(desired, "apiVersion"))
	kind, ok2 := AsString(Get(desired, "kind"))
	name, ok3 := AsString(Get(desired, "metadata", "name"))
	if !ok1 || !ok2 || !ok3 {
		return nil, false
	}
	return r.Child(apiVersion, kind, name)
}

// ChildrenOf is every current child of one kind, by name (nil when none).
func (r *ReconcileRequest) ChildrenOf(apiVersion, kind string) map[string]any {
	return r.Children[ChildKey(apiVersion, kind)]
}

// Contract is the contract of a related ref entry; errors read
// "related.<name>.contract.<field> must be ...". Empty when unknown or the object is absent.
func (r *ReconcileRequest) Contract(related string) Fields {
	f := Fields{path: "related." + related + ".contract"}
	if rel, ok := r.Related[related]; ok {
		f.obj = rel.Contract
	}
	return f
}

// Conditions is the parent's current status.conditions (nil when none).
func (r *ReconcileRequest) Conditions() []any {
	l, _ := Get(r.Object, "status", "conditions").([]any)
	return l
}
