package edge

import (
	"context"

	"google.golang.org/grpc"

	"github.com/agentictrust/atf/broker/fault"
)

// Relay serves a watch stream: it sends the headers (telling the client
// the watch is in place before any event), then every event from events,
// converted by send, until the caller goes away (nil), atfd stops
// (ErrShuttingDown, at once) or events closes because the watcher fell
// behind (ResourceExhausted, saying behind).
func Relay[E any](ctx context.Context, stream grpc.ServerStream, closing <-chan struct{}, events <-chan E, behind string, send func(E) error) error {
	if err := stream.SendHeader(nil); err != nil {
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
				return fault.New(fault.Exhausted, "%s", behind)
			}
			if err := send(ev); err != nil {
				return err
			}
		}
	}
}
