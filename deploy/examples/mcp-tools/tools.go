package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/agentictrust/atf/oauth/verify"
)

// The MCP methods served, and the scope each requires. An MCP server
// behind OAuth answers a token without the scope with 403
// insufficient_scope.
var methodScopes = map[string]string{
	"initialize": "",
	"tools/list": "tools.list",
	"tools/call": "tools.call",
}

type rpcRequest struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
}

type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

type rpcResponse struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  any             `json:"result,omitempty"`
	Error   *rpcError       `json:"error,omitempty"`
}

// tools is an MCP-style tool server: JSON-RPC 2.0 over POST, two harmless
// tools. It runs behind the verifier's middleware, and logs who called
// through which delegation chain.
type tools struct {
	log *slog.Logger
}

func (s *tools) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST a JSON-RPC request", http.StatusMethodNotAllowed)
		return
	}
	claims, _ := verify.ClaimsFrom(r.Context())
	var req rpcRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.JSONRPC != "2.0" {
		writeRPC(w, rpcResponse{Error: &rpcError{Code: -32700, Message: "not a JSON-RPC 2.0 request"}})
		return
	}
	scope, ok := methodScopes[req.Method]
	if !ok {
		writeRPC(w, rpcResponse{ID: req.ID, Error: &rpcError{Code: -32601, Message: "no method " + req.Method}})
		return
	}
	if scope != "" {
		if err := claims.Require(scope); err != nil {
			verify.Refuse(w, err, scope)
			return
		}
	}
	result, rerr := s.call(claims, req)
	writeRPC(w, rpcResponse{ID: req.ID, Result: result, Error: rerr})
}

func (s *tools) call(c *verify.Claims, req rpcRequest) (any, *rpcError) {
	switch req.Method {
	case "initialize":
		return map[string]any{
			"protocolVersion": "2025-06-18",
			"capabilities":    map[string]any{"tools": map[string]any{}},
			"serverInfo":      map[string]any{"name": "atf-mcp-tools", "version": "0.1.0"},
		}, nil
	case "tools/list":
		return map[string]any{"tools": []map[string]any{
			{"name": "whoami", "description": "Says who called, through which delegation chain.",
				"inputSchema": map[string]any{"type": "object"}},
			{"name": "echo", "description": "Returns its text.", "inputSchema": map[string]any{
				"type": "object", "properties": map[string]any{"text": map[string]any{"type": "string"}}, "required": []string{"text"}}},
		}}, nil
	}
	var p struct {
		Name      string `json:"name"`
		Arguments struct {
			Text string `json:"text"`
		} `json:"arguments"`
	}
	if err := json.Unmarshal(req.Params, &p); err != nil {
		return nil, &rpcError{Code: -32602, Message: "params: " + err.Error()}
	}
	s.log.Info("tool call", slog.String("tool", p.Name), slog.String("holder", c.Subject),
		slog.String("chain", chain(c)), slog.Int("depth", c.Depth()), slog.String("decision", c.DecisionID))
	switch p.Name {
	case "whoami":
		return text(fmt.Sprintf("%s (level %s, decision %s)", chain(c), c.Level, c.DecisionID)), nil
	case "echo":
		return text(p.Arguments.Text), nil
	}
	return nil, &rpcError{Code: -32602, Message: "no tool " + p.Name}
}

// chain is the delegation chain root first: "A → B → C" for C acting for
// B acting for A.
func chain(c *verify.Claims) string {
	ids := []string{c.Subject}
	for _, a := range c.Actors() {
		ids = append(ids, a.Subject)
	}
	slices.Reverse(ids)
	return strings.Join(ids, " → ")
}

func text(s string) map[string]any {
	return map[string]any{"content": []map[string]any{{"type": "text", "text": s}}}
}

func writeRPC(w http.ResponseWriter, resp rpcResponse) {
	resp.JSONRPC = "2.0"
	if resp.Result == nil && resp.Error == nil {
		resp.Error = &rpcError{Code: -32603, Message: "no result"}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}
