package wasmop

// PushChild appends a desired child (a Child or a map[string]any). Keep a stable order: a
// steady state must produce the same list.
func (r *ReconcileResponse) PushChild(child any) *ReconcileResponse {
	if c, ok := child.(Child); ok {
		child = c.Object()
	}
	r.Children = append(r.Children, child)
	return r
}

// SetStatus sets the status to apply to the parent.
func (r *ReconcileResponse) SetStatus(status any) *ReconcileResponse {
	r.Status = status
	return r
}

// Normal records a Normal event on the parent.
func (r *ReconcileResponse) Normal(reason, message string) *ReconcileResponse {
	r.Events = append(r.Events, Event{Type: EventTypeNormal, Reason: reason, Message: message})
	return r
}

// Warning records a Warning event on the parent.
func (r *ReconcileResponse) Warning(reason, message string) *ReconcileResponse {
	r.Events = append(r.Events, Event{Type: EventTypeWarning, Reason: reason, Message: message})
	return r
}

// Finalized is the response of a finalize with nothing to clean up.
func Finalized() ReconcileResponse { return ReconcileResponse{Finalized: true} }
