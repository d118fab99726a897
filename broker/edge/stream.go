package edge

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// WatchHeader is the header a watch stream's answer carries once the
// watch is in place: every answer has headers (x-request-id), so their
// arrival alone no longer says so. broker/client and atfctl wait for it.
const WatchHeader = "atf-watch"

// Relay serves a watch stream: it sends the headers with WatchHeader
// (telling the client the watch is in place before any event), then every event from events,
// converted by send, until the caller goes away (nil), atfd stops
// (ErrShuttingDown, at once) or events closes: then it returns what
// closed says (the watcher fell behind, or the caller lost the right to
// watch).
func Relay[E any](ctx context.Context, stream grpc.ServerStream, closing <-chan struct{}, events <-chan E, closed func() error, send func(E) error) error {
	if err := stream.SendHeader(metadata.Pairs(WatchHeader, "open")); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-closing:
			return ErrShuttingDown
		case ev, ok := <-events:
			if !ok {
				return closed()
			}
			if err := send(ev); err != nil {
				return err
			}
		}
	}
}
