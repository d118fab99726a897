package console

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"path"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

var funcs = template.FuncMap{
	"when": func(t *timestamppb.Timestamp) string {
		if t == nil || t.AsTime().IsZero() {
			return "—"
		}
		return t.AsTime().UTC().Format("2006-01-02 15:04:05Z")
	},
	"dur": func(d *durationpb.Duration) string {
		if d == nil {
			return "—"
		}
		return d.AsDuration().String()
	},
	"level": func(l brokerv1.Level) string {
		return strings.ToLower(strings.TrimPrefix(l.String(), "LEVEL_"))
	},
	"enum": func(v fmt.Stringer) string {
		s := v.String()
		if i := strings.Index(s, "_STATUS_"); i >= 0 {
			s = s[i+len("_STATUS_"):]
		}
		return strings.ToLower(s)
	},
	"json": func(m proto.Message) string {
		b, err := protojson.MarshalOptions{Multiline: true}.Marshal(m)
		if err != nil {
			return ""
		}
		return string(b)
	},
	"join": strings.Join,
}

// parsePages parses every page with the layout around it.
func parsePages() (map[string]*template.Template, error) {
	names, err := templateFS.ReadDir("templates")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(n.Name(), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", path.Join("templates", n.Name()))
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// view is what every page's template gets.
type view struct {
	S    *session
	Can  caps
	Page string
	Now  time.Time
	D    map[string]any
}

// render writes page for s (nil: nobody signed in) with data.
func (c *Console) render(w http.ResponseWriter, r *http.Request, s *session, page string, data map[string]any) {
	t, ok := c.pages[page]
	if !ok {
		http.Error(w, "no such page", http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, view{S: s, Can: capsOf(s), Page: page, Now: c.cfg.Now(), D: data}); err != nil {
		c.log.Error("console page failed", "page", page, "error", err.Error())
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(buf.Bytes())
}

// diffLine is one line of a diff: "+" added, "-" removed, " " kept.
type diffLine struct {
	Op   string
	Text string
}

// diffLines is a line diff of a to b (longest common subsequence;
// policies are a few thousand lines at most).
func diffLines(a, b string) []diffLine {
	x, y := strings.Split(a, "\n"), strings.Split(b, "\n")
	if len(x)*len(y) > 4_000_000 {
		return []diffLine{{Op: "!", Text: "the policies are too large to compare here; use atfctl policy diff"}}
	}
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []diffLine
	i, j := 0, 0
	for i < len(x) && j < len(y) {
		switch {
		case x[i] == y[j]:
			out = append(out, diffLine{" ", x[i]})
			i, j = i+1, j+1
		case lcs[i+1][j] >= lcs[i][j+1]:
			out = append(out, diffLine{"-", x[i]})
			i++
		default:
			out = append(out, diffLine{"+", y[j]})
			j++
		}
	}
	for ; i < len(x); i++ {
		out = append(out, diffLine{"-", x[i]})
	}
	for ; j < len(y); j++ {
		out = append(out, diffLine{"+", y[j]})
	}
	return out
}
