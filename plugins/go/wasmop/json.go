package wasmop

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Handler is a reconcile or finalize function. Its error's text is the message the host
// reports on the parent, verbatim.
type Handler func(req *ReconcileRequest) (ReconcileResponse, error)

// ErrorCode is what an export returns to the host when the handler fails (any non-zero fails
// the call).
const ErrorCode int32 = 1

// BadRequestError reports input that is not a ReconcileRequest.
type BadRequestError struct {
	Err error
}

func (e *BadRequestError) Error() string {
	return fmt.Sprintf("the request is not a wasmop %s ReconcileRequest (%v); rebuild the "+
		"plugin against the wasmop Go module that matches the operator", ABIVersion, e.Err)
}

func (e *BadRequestError) Unwrap() error { return e.Err }

// DecodeRequest parses the host's input. Numbers inside unstructured values become
// json.Number, so no integer loses precision and "2.0" stays distinct from "2".
func DecodeRequest(input []byte) (ReconcileRequest, error) {
	var req ReconcileRequest
	dec := json.NewDecoder(bytes.NewReader(input))
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		return ReconcileRequest{}, &BadRequestError{Err: err}
	}
	return req, nil
}

// CallJSON is what an export does, as a plain function for tests: decode the request, call
// h, encode its response.
func CallJSON(input []byte, h Handler) ([]byte, error) {
	req, err := DecodeRequest(input)
	if err != nil {
		return nil, err
	}
	resp, err := h(&req)
	if err != nil {
		return nil, err
	}
	return Marshal(resp)
}

// Marshal encodes v as serde_json does: compact, no HTML escaping (< > & stay as they are),
// U+2028 and U+2029 unescaped, no trailing newline.
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return unescapeLineSeparators(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))), nil
}

// unescapeLineSeparators turns the \u2028 and \u2029 escapes encoding/json always writes
// into the characters themselves, as serde_json writes them. Only real escapes are touched:
// an escaped backslash followed by "u2028" is left alone.
func unescapeLineSeparators(b []byte) []byte {
	if !bytes.Contains(b, []byte(`\u202`)) {
		return b
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 >= len(b) {
			out = append(out, b[i])
			continue
		}
		if b[i+1] == 'u' && i+6 <= len(b) {
			switch string(b[i+2 : i+6]) {
			case "2028":
				out = utf8.AppendRune(out, '\u2028')
				i += 5
				continue
			case "2029":
				out = utf8.AppendRune(out, '\u2029')
				i += 5
				continue
			}
		}
		// Any other escape: copy the backslash and the escaped byte together.
		out = append(out, b[i], b[i+1])
		i++
	}
	return out
}
