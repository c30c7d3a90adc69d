package wasmop

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// FieldError reports a field that is present with the wrong type or range. Its text names
// the field by its full path: "spec.replicas must be a non-negative integer".
type FieldError struct {
	Field    string
	Expected string
}

func (e *FieldError) Error() string { return e.Field + " must be " + e.Expected }

// DecodeError reports a field that does not decode into the type a plugin asked for.
type DecodeError struct {
	Field string
	Err   error
}

func (e *DecodeError) Error() string { return fmt.Sprintf("%s is not valid: %v", e.Field, e.Err) }

func (e *DecodeError) Unwrap() error { return e.Err }

// Fields reads one JSON object (a parent's spec, the plugin config, a contract) and names
// fields by their path in errors. Typed getters return (value, present, error): absent and
// null fields are not present; a wrong type is a *FieldError. Get is the lenient read.
type Fields struct {
	path string
	obj  map[string]any
}

// NewFields reads v (a map[string]any; anything else reads as an empty object), reporting
// fields as path.<field>.
func NewFields(path string, v any) Fields {
	m, _ := v.(map[string]any)
	return Fields{path: path, obj: m}
}

// PathOf is the dotted path of a field, e.g. "spec.replicas".
func (f Fields) PathOf(key string) string {
	if f.path == "" {
		return key
	}
	return f.path + "." + key
}

// Raw is the field's value and whether it is present and not null.
func (f Fields) Raw(key string) (any, bool) {
	v, ok := f.obj[key]
	return v, ok && v != nil
}

// Has reports whether the field is present and not null.
func (f Fields) Has(key string) bool {
	_, ok := f.Raw(key)
	return ok
}

// Get is the lenient read: the value, or nil when absent. Combine with AsString, AsUint64...
func (f Fields) Get(key string) any { return f.obj[key] }

// Fields is a nested object, e.g. spec.Fields("tls"); absent reads as empty.
func (f Fields) Fields(key string) Fields {
	return NewFields(f.PathOf(key), f.obj[key])
}

// String reads a string field.
func (f Fields) String(key string) (string, bool, error) {
	return typed(f, key, "a string", AsString)
}

// Uint64 reads an integer in 0..MaxUint64 ("2.0" and 1e3 are not integers, as in Rust).
func (f Fields) Uint64(key string) (uint64, bool, error) {
	return typed(f, key, "a non-negative integer", AsUint64)
}

// Int64 reads an integer in the int64 range.
func (f Fields) Int64(key string) (int64, bool, error) {
	return typed(f, key, "an integer", AsInt64)
}

// Float64 reads any number.
func (f Fields) Float64(key string) (float64, bool, error) {
	return typed(f, key, "a number", AsFloat64)
}

// Bool reads true or false.
func (f Fields) Bool(key string) (bool, bool, error) {
	return typed(f, key, "true or false", AsBool)
}

// List reads a list.
func (f Fields) List(key string) ([]any, bool, error) {
	return typed(f, key, "a list", func(v any) ([]any, bool) { l, ok := v.([]any); return l, ok })
}

// Decode decodes the field into out (a pointer to any type encoding/json can fill) and
// reports whether it was present.
func (f Fields) Decode(key string, out any) (bool, error) {
	v, ok := f.Raw(key)
	if !ok {
		return false, nil
	}
	b, err := Marshal(v)
	if err == nil {
		err = json.Unmarshal(b, out)
	}
	if err != nil {
		return true, &DecodeError{Field: f.PathOf(key), Err: err}
	}
	return true, nil
}

func typed[T any](f Fields, key, expected string, read func(any) (T, bool)) (T, bool, error) {
	var zero T
	v, ok := f.Raw(key)
	if !ok {
		return zero, false, nil
	}
	t, ok := read(v)
	if !ok {
		return zero, true, &FieldError{Field: f.PathOf(key), Expected: expected}
	}
	return t, true, nil
}

// Get walks nested objects leniently, like indexing a serde_json Value: Get(obj,
// "metadata", "name"). It returns nil when a step is missing or not an object.
func Get(v any, path ...string) any {
	for _, key := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[key]
	}
	return v
}

// AsString is v as a string.
func AsString(v any) (string, bool) {
	s, ok := v.(string)
	return s, ok
}

// AsBool is v as a bool.
func AsBool(v any) (bool, bool) {
	b, ok := v.(bool)
	return b, ok
}

// AsUint64 is v as a non-negative integer: a json.Number written as an integer, or a Go
// integer. Floats are not integers (as serde_json's as_u64), even when whole.
func AsUint64(v any) (uint64, bool) {
	switch n := v.(type) {
	case json.Number:
		u, err := strconv.ParseUint(string(n), 10, 64)
		return u, err == nil
	case int:
		return uint64(n), n >= 0
	case int32:
		return uint64(n), n >= 0
	case int64:
		return uint64(n), n >= 0
	case uint:
		return uint64(n), true
	case uint32:
		return uint64(n), true
	case uint64:
		return n, true
	}
	return 0, false
}

// AsInt64 is v as an integer in the int64 range (json.Number or a Go integer).
func AsInt64(v any) (int64, bool) {
	switch n := v.(type) {
	case json.Number:
		i, err := strconv.ParseInt(string(n), 10, 64)
		return i, err == nil
	case int:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case uint:
		return int64(n), uint64(n) <= math.MaxInt64
	case uint32:
		return int64(n), true
	case uint64:
		return int64(n), n <= math.MaxInt64
	}
	return 0, false
}

// AsFloat64 is v as a number of any kind.
func AsFloat64(v any) (float64, bool) {
	switch n := v.(type) {
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case float64:
		return n, true
	case float32:
		return float64(n), true
	}
	if i, ok := AsInt64(v); ok {
		return float64(i), true
	}
	if u, ok := AsUint64(v); ok {
		return float64(u), true
	}
	return 0, false
}
