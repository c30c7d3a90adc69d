package wasmop

// Child builds a desired Kubernetes object. Methods change the object in place and return
// it for chaining. Leave metadata.namespace out: the host uses the parent's.
type Child struct {
	obj map[string]any
}

// NewChild starts {"apiVersion", "kind", "metadata": {"name"}}.
func NewChild(apiVersion, kind, name string) Child {
	return Child{obj: map[string]any{
		"apiVersion": apiVersion,
		"kind":       kind,
		"metadata":   map[string]any{"name": name},
	}}
}

// Label adds (or replaces) one metadata.labels entry.
func (c Child) Label(key, value string) Child { return c.metaEntry("labels", key, value) }

// Labels adds every entry to metadata.labels.
func (c Child) Labels(labels map[string]string) Child {
	for k, v := range labels {
		c.Label(k, v)
	}
	return c
}

// Annotation adds (or replaces) one metadata.annotations entry.
func (c Child) Annotation(key, value string) Child {
	return c.metaEntry("annotations", key, value)
}

// Field sets a top-level field such as "spec" or "data".
func (c Child) Field(key string, value any) Child {
	c.obj[key] = value
	return c
}

// Reference is "Kind/name", as used in status summaries and event messages.
func (c Child) Reference() string { return Reference(c.obj) }

// Object is the object as a map, ready for the response.
func (c Child) Object() map[string]any { return c.obj }

// MarshalJSON encodes the object.
func (c Child) MarshalJSON() ([]byte, error) { return Marshal(c.obj) }

func (c Child) metaEntry(field, key, value string) Child {
	meta, ok := c.obj["metadata"].(map[string]any)
	if !ok {
		meta = map[string]any{}
		c.obj["metadata"] = meta
	}
	entries, ok := meta[field].(map[string]any)
	if !ok {
		entries = map[string]any{}
		meta[field] = entries
	}
	entries[key] = value
	return c
}

// Reference is "Kind/name" of any object (empty parts when absent), e.g. "Deployment/site".
func Reference(object any) string {
	if c, ok := object.(Child); ok {
		object = c.Object()
	}
	kind, _ := AsString(Get(object, "kind"))
	name, _ := AsString(Get(object, "metadata", "name"))
	return kind + "/" + name
}
