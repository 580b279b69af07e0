// Nomad's periodic launch times, for the Nomad double: what nomad/structs' PeriodicConfig
// Validate and Next answer, computed with the cron library Nomad calls (Debian packages
// gorhill/cronexpr, of which hashicorp/cronexpr is a fork) and Go's own time zone database
// (time.LoadLocation). Built in GOPATH mode against /usr/share/gocode (package
// golang-github-gorhill-cronexpr-dev); nothing is downloaded.
//
// One JSON request on stdin:
//
//	{"spec": "", "specs": ["*/10 * * * * * *"], "time_zone": "UTC", "after_unix_nanos": 1700000000000000000}
//
// One JSON reply on stdout:
//
//	{"errors": [], "next_unix_nanos": 1700000010000000000}
//
// errors as Validate lists them (a spec is needed; the time zone must load; every spec must
// parse); next_unix_nanos is the earliest launch strictly after the given instant, read in
// the time zone, 0 when no time matches (or a spec does not parse). As in Nomad, a non-empty
// spec alone decides the next launch; specs are used only without it.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/gorhill/cronexpr"
)

type request struct {
	Spec           string   `json:"spec"`
	Specs          []string `json:"specs"`
	TimeZone       string   `json:"time_zone"`
	AfterUnixNanos int64    `json:"after_unix_nanos"`
}

type reply struct {
	Errors        []string `json:"errors"`
	NextUnixNanos int64    `json:"next_unix_nanos"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintf(os.Stderr, "cronexpr helper: bad request: %v\n", err)
		os.Exit(2)
	}
	out := reply{Errors: []string{}}
	if req.Spec == "" && len(req.Specs) == 0 {
		out.Errors = append(out.Errors, "Must specify a spec")
	}
	location := time.UTC
	if req.TimeZone != "" {
		loaded, err := time.LoadLocation(req.TimeZone)
		if err != nil {
			out.Errors = append(out.Errors, fmt.Sprintf("Invalid time zone %q: %v", req.TimeZone, err))
		} else {
			location = loaded
		}
	}
	all := req.Specs
	if req.Spec != "" {
		all = append([]string{req.Spec}, req.Specs...)
	}
	for _, spec := range all {
		if _, err := cronexpr.Parse(spec); err != nil {
			out.Errors = append(out.Errors, fmt.Sprintf("Invalid cron spec %q: %v", spec, err))
		}
	}
	launching := req.Specs
	if req.Spec != "" {
		launching = []string{req.Spec}
	}
	from := time.Unix(0, req.AfterUnixNanos).In(location)
	var next time.Time
	for _, spec := range launching {
		expr, err := cronexpr.Parse(spec)
		if err != nil {
			next = time.Time{}
			break
		}
		t := nextOf(expr, from)
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if !next.IsZero() {
		out.NextUnixNanos = next.UnixNano()
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(2)
	}
}

// nextOf is the library's Next, with a panic in it read as "no next launch", as Nomad's
// CronParseNext reads it.
func nextOf(expr *cronexpr.Expression, from time.Time) (t time.Time) {
	defer func() {
		if recover() != nil {
			t = time.Time{}
		}
	}()
	return expr.Next(from)
}
