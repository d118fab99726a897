package verify

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// The stream's parser follows the Server-Sent Events format: CRLF or LF,
// comments, multi-line data, the default event type, a missing space.
func TestReadEvents(t *testing.T) {
	in := ": a comment\r\n" +
		"event: revoked\r\nid: 7\r\ndata: {\"jtis\":\r\ndata: [\"a\"]}\r\n\r\n" +
		"data:{}\n\n" +
		"event:ping\nid:8\n\n" +
		"event: cut off"
	var got []event
	err := readEvents(strings.NewReader(in), func(e event) { got = append(got, e) })
	want := []event{
		{typ: "revoked", id: "7", data: "{\"jtis\":\n[\"a\"]}"},
		{typ: "message", data: "{}"},
		{typ: "ping", id: "8"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("events = %+v, want %+v", got, want)
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("end of stream = %v, want io.ErrUnexpectedEOF", err)
	}
}
