// Command gotemplate executes one Nomad `template` block with Go's own text/template, the
// engine consul-template (and so Nomad) uses, against a fixed context given as JSON on stdin:
//
//	{"template": "...", "left_delimiter": "{{", "right_delimiter": "}}",
//	 "error_on_missing_key": true,
//	 "env": {"NOMAD_PORT_pg": "5432"},
//	 "namespace": "default", "region": "global",
//	 "variables": {"nomad/jobs/main-postgres": {"key": "value"}},
//	 "readable_variable_paths": ["nomad/jobs", "nomad/jobs/main-postgres"],
//	 "services": {"main-primary": [{"Node": "n1", "Address": "10.0.0.1", "Port": 5432,
//	              "Status": "passing", "ID": "x", "Name": "main-primary", "Tags": [], "ServiceMeta": {}}]},
//	 "consul_token": true, "consul_kv": {"a/b": "c"},
//	 "vault_token": true, "vault": {"secret/data/x": {"data": {"k": "v"}, "metadata": {}}}}
//
// and writes one JSON document on stdout:
//
//	{"rendered": "..."}                         every dependency was available
//	{"blocked": ["nomad.var.block(p@ns.region)"]} consul-template would wait (Nomad keeps the task pending)
//	{"error": "..."}                            a template error (exit status 1)
//
// Semantics follow consul-template's template/funcs.go and dependency/*.go (read, not copied):
// a function whose data is not there yet returns a zero value and records the dependency as
// missing; the template still executes, and a render with missing dependencies is not written.
//
// Functions implemented:
//
//	data:    env, mustEnv, envOrDefault, nomadVar, nomadVarExists, nomadVarList,
//	         service, services, key, keyOrDefault, keyExists, secret
//	helpers: add, subtract, multiply, divide, modulo, minimum, maximum, toJSON, toJSONPretty,
//	         toLower, toUpper, trimSpace, trim, trimPrefix, trimSuffix, split, join, replaceAll,
//	         regexReplaceAll, regexMatch, contains, in, containsAll, containsAny, parseInt,
//	         parseUint, parseBool, parseFloat, parseJSON, base64Encode, base64Decode,
//	         base64URLEncode, base64URLDecode, indent, loop, byTag
//	plus Go's builtins (index, len, printf, eq, and, or, not, ...).
//
// The packs use env, nomadVar, secret, service, index and add (plus with/range/if/else).
//
// Choices where a real cluster has no single answer here:
//   - env: only the task environment given; consul-template would fall back to the Nomad
//     client's own process environment, which a task must not rely on.
//   - nomadVar of a path the task's workload identity cannot read: Nomad answers 403 and
//     consul-template retries, so the template never renders: reported as blocked.
//   - consul_token false (Consul with ACLs, default_policy = "deny", anonymous): Consul
//     filters catalog and health results it may not show, so service/services return an
//     empty list (that is data, not a wait: `with service` takes its else branch); KV reads
//     answer 403 Permission denied and consul-template retries: key* are reported blocked.
//   - vault_token false (the task has no `vault` block, so no Vault token): Vault answers
//     403 and consul-template retries: secret is reported blocked.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
)

type input struct {
	Template              string                       `json:"template"`
	LeftDelimiter         string                       `json:"left_delimiter"`
	RightDelimiter        string                       `json:"right_delimiter"`
	ErrorOnMissingKey     bool                         `json:"error_on_missing_key"`
	Env                   map[string]string            `json:"env"`
	Namespace             string                       `json:"namespace"`
	Region                string                       `json:"region"`
	Variables             map[string]map[string]string `json:"variables"`
	ReadableVariablePaths []string                     `json:"readable_variable_paths"`
	Services              map[string][]*HealthService  `json:"services"`
	ConsulToken           bool                         `json:"consul_token"`
	ConsulKV              map[string]string            `json:"consul_kv"`
	VaultToken            bool                         `json:"vault_token"`
	Vault                 map[string]map[string]any    `json:"vault"`
}

// HealthService is what `service` returns (consul-template's dependency.HealthService).
type HealthService struct {
	Node           string
	NodeID         string
	NodeAddress    string
	NodeDatacenter string
	Address        string
	ID             string
	Name           string
	Namespace      string
	Tags           []string
	ServiceMeta    map[string]string
	NodeMeta       map[string]string
	Status         string
	Port           int
}

// CatalogSnippet is what `services` returns.
type CatalogSnippet struct {
	Name string
	Tags []string
}

// NomadVarItems is what `nomadVar` returns: the variable's items by key. Printing an item
// prints its value (as consul-template's NomadVarItem.String does).
type NomadVarItems map[string]NomadVarItem

type NomadVarItem struct {
	Key, Value string
}

func (i NomadVarItem) String() string               { return i.Value }
func (i NomadVarItem) MarshalJSON() ([]byte, error) { return json.Marshal(i.Value) }

// Keys returns the sorted keys.
func (v NomadVarItems) Keys() []string {
	out := make([]string, 0, len(v))
	for k := range v {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Values returns the values in key order.
func (v NomadVarItems) Values() []string {
	out := []string{}
	for _, k := range v.Keys() {
		out = append(out, v[k].Value)
	}
	return out
}

// NomadVarMeta is what `nomadVarList` returns for each variable.
type NomadVarMeta struct {
	Namespace, Path string
}

func (m NomadVarMeta) String() string { return m.Path }

// Secret is what `secret` returns (consul-template's dependency.Secret).
type Secret struct {
	RequestID     string
	LeaseID       string
	LeaseDuration int
	Renewable     bool
	Data          map[string]any
	Warnings      []string
}

type state struct {
	in      input
	missing []string
	seen    map[string]bool
}

func (s *state) block(dep string) {
	if !s.seen[dep] {
		s.seen[dep] = true
		s.missing = append(s.missing, dep)
	}
}

var nvPathRe = regexp.MustCompile(`\A(?P<path>[^@]+)(@(?P<namespace>[^.]+)(\.(?P<region>.+))?)?\z`)

// varQuery splits `path[@namespace[.region]]` (consul-template's NVGetQuery format).
func (s *state) varQuery(raw string) (path, namespace, region string, err error) {
	raw = strings.Trim(strings.TrimSpace(raw), "/")
	m := nvPathRe.FindStringSubmatch(raw)
	if m == nil {
		return "", "", "", fmt.Errorf("nomad.var.get: invalid format: %q", raw)
	}
	path, namespace, region = m[1], m[3], m[5]
	if namespace == "" {
		namespace = s.in.Namespace
	}
	if namespace == "" {
		namespace = "default"
	}
	if region == "" {
		region = "global"
	}
	return path, namespace, region, nil
}

// readable: the workload identity's implicit policy covers exact paths only, in the task's
// own namespace.
func (s *state) readable(path, namespace string) bool {
	own := s.in.Namespace
	if own == "" {
		own = "default"
	}
	if namespace != own {
		return false
	}
	for _, p := range s.in.ReadableVariablePaths {
		if p == path {
			return true
		}
	}
	return false
}

func (s *state) nomadVar(raw string) (NomadVarItems, error) {
	path, ns, region, err := s.varQuery(raw)
	if err != nil {
		return nil, err
	}
	dep := fmt.Sprintf("nomad.var.block(%s@%s.%s)", path, ns, region)
	items, ok := s.in.Variables[path]
	if !ok || !s.readable(path, ns) {
		s.block(dep)
		return nil, nil
	}
	out := NomadVarItems{}
	for k, v := range items {
		out[k] = NomadVarItem{Key: k, Value: v}
	}
	return out, nil
}

func (s *state) nomadVarExists(raw string) (bool, error) {
	path, ns, region, err := s.varQuery(raw)
	if err != nil {
		return false, err
	}
	if !s.readable(path, ns) {
		s.block(fmt.Sprintf("nomad.var.get(%s@%s.%s)", path, ns, region))
		return false, nil
	}
	_, ok := s.in.Variables[path]
	return ok, nil
}

// nomadVarList lists the variables under a prefix that the identity may read (Nomad
// filters list results by ACL instead of refusing them).
func (s *state) nomadVarList(args ...string) ([]NomadVarMeta, error) {
	prefix := ""
	if len(args) > 1 {
		return nil, fmt.Errorf("nomadVarList: wrong number of arguments, expected 0 or 1, got %d", len(args))
	}
	if len(args) == 1 {
		prefix = args[0]
	}
	path, ns, _, err := s.varQuery(prefix + "x")
	if err != nil {
		return nil, err
	}
	path = strings.TrimSuffix(path, "x")
	out := []NomadVarMeta{}
	for p := range s.in.Variables {
		if strings.HasPrefix(p, path) && s.readable(p, ns) {
			out = append(out, NomadVarMeta{Namespace: ns, Path: p})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

var serviceRe = regexp.MustCompile(`\A((?P<tag>[[:word:]\-.]+)\.)?(?P<name>[[:word:]\-/_]+)(@(?P<dc>[[:word:]\.\-]+))?(:(?P<port>[0-9]+))?\z`)

var statuses = map[string]bool{"any": true, "passing": true, "warning": true, "critical": true, "unknown": true, "maintenance": true}

// service "[tag.]name[@dc][|status,status]" (several arguments are joined with "|").
// Without a status filter only passing instances are returned; sorted by node, then ID.
func (s *state) service(args ...string) ([]*HealthService, error) {
	result := []*HealthService{}
	if len(args) == 0 || args[0] == "" {
		return result, nil
	}
	raw := strings.Join(args, "|")
	query, filterText, _ := strings.Cut(raw, "|")
	m := serviceRe.FindStringSubmatch(strings.TrimSpace(query))
	if m == nil {
		return nil, fmt.Errorf("health.service: invalid format: %q", raw)
	}
	tag, name := m[2], m[3]
	var filter []string
	for _, f := range strings.Split(filterText, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if !statuses[f] {
			return nil, fmt.Errorf("service filter: invalid filter %q", f)
		}
		filter = append(filter, f)
	}
	if len(filter) > 1 {
		for _, f := range filter {
			if f == "any" {
				return nil, fmt.Errorf("service filter: cannot specify extra keys when using \"any\"")
			}
		}
	}
	if len(filter) == 0 {
		filter = []string{"passing"}
	}
	if !s.in.ConsulToken {
		return result, nil
	}
	for _, svc := range s.in.Services[name] {
		if tag != "" && !containsString(svc.Tags, tag) {
			continue
		}
		status := svc.Status
		if status == "" {
			status = "passing"
		}
		if filter[0] != "any" && !containsString(filter, status) {
			continue
		}
		c := *svc
		if c.Name == "" {
			c.Name = name
		}
		c.Status = status
		if c.Address == "" {
			c.Address = c.NodeAddress
		}
		tags := append([]string{}, c.Tags...)
		sort.Strings(tags)
		c.Tags = tags
		result = append(result, &c)
	}
	sort.SliceStable(result, func(i, j int) bool {
		if result[i].Node != result[j].Node {
			return result[i].Node < result[j].Node
		}
		return result[i].ID < result[j].ID
	})
	return result, nil
}

func (s *state) services(args ...string) ([]*CatalogSnippet, error) {
	result := []*CatalogSnippet{}
	if !s.in.ConsulToken {
		return result, nil
	}
	for name, instances := range s.in.Services {
		tags := map[string]bool{}
		for _, i := range instances {
			for _, t := range i.Tags {
				tags[t] = true
			}
		}
		snippet := &CatalogSnippet{Name: name, Tags: []string{}}
		for t := range tags {
			snippet.Tags = append(snippet.Tags, t)
		}
		sort.Strings(snippet.Tags)
		result = append(result, snippet)
	}
	sort.Slice(result, func(i, j int) bool { return result[i].Name < result[j].Name })
	return result, nil
}

func (s *state) kv(key string) (string, bool, bool) {
	if !s.in.ConsulToken {
		return "", false, false
	}
	v, ok := s.in.ConsulKV[key]
	return v, ok, true
}

func (s *state) key(key string) (string, error) {
	if key == "" {
		return "", nil
	}
	v, ok, allowed := s.kv(key)
	if !ok || !allowed {
		s.block(fmt.Sprintf("kv.block(%s)", key))
		return "", nil
	}
	return v, nil
}

func (s *state) keyOrDefault(key, def string) (string, error) {
	if key == "" {
		return def, nil
	}
	v, ok, allowed := s.kv(key)
	if !allowed {
		s.block(fmt.Sprintf("kv.get(%s)", key))
		return def, nil
	}
	if !ok || v == "" {
		return def, nil
	}
	return v, nil
}

func (s *state) keyExists(key string) (bool, error) {
	if key == "" {
		return false, nil
	}
	_, ok, allowed := s.kv(key)
	if !allowed {
		s.block(fmt.Sprintf("kv.get(%s)", key))
		return false, nil
	}
	return ok, nil
}

// secret reads a Vault path (writes, with k=v arguments, are not supported).
func (s *state) secret(args ...string) (*Secret, error) {
	if len(args) == 0 {
		return nil, nil
	}
	if len(args) > 1 {
		return nil, fmt.Errorf("secret: writes (%q) are not supported by this test engine", args)
	}
	path := strings.Trim(strings.TrimSpace(args[0]), "/")
	data, ok := s.in.Vault[path]
	if !ok || !s.in.VaultToken {
		s.block(fmt.Sprintf("vault.read(%s)", path))
		return nil, nil
	}
	return &Secret{Data: data, Warnings: []string{}}, nil
}

func containsString(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// --- helpers (consul-template semantics; pipe-friendly argument order)

func number(v any) (reflect.Value, string, error) {
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv, "int", nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return rv, "uint", nil
	case reflect.Float32, reflect.Float64:
		return rv, "float", nil
	}
	return rv, "", fmt.Errorf("unknown type for %q (%T)", fmt.Sprint(v), v)
}

// arith applies op to (a, b) where the template wrote `op b a` (consul-template's order:
// `{{ add 1 2 }}` is 2 + 1, `{{ subtract 1 5 }}` is 5 - 1).
func arith(name string, op func(a, b float64) float64, iop func(a, b int64) (int64, error)) func(b, a any) (any, error) {
	return func(b, a any) (any, error) {
		av, ak, err := number(a)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		bv, bk, err := number(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		if ak == "float" || bk == "float" {
			return op(toFloat(av, ak), toFloat(bv, bk)), nil
		}
		if ak == "uint" && bk == "uint" {
			r, err := iop(int64(av.Uint()), int64(bv.Uint()))
			return uint64(r), err
		}
		return iop(toInt(av, ak), toInt(bv, bk))
	}
}

func toFloat(v reflect.Value, kind string) float64 {
	switch kind {
	case "int":
		return float64(v.Int())
	case "uint":
		return float64(v.Uint())
	}
	return v.Float()
}

func toInt(v reflect.Value, kind string) int64 {
	if kind == "uint" {
		return int64(v.Uint())
	}
	return v.Int()
}

func in(l, v any) (bool, error) {
	lv := reflect.ValueOf(l)
	switch lv.Kind() {
	case reflect.Array, reflect.Slice:
		for i := 0; i < lv.Len(); i++ {
			if reflect.DeepEqual(lv.Index(i).Interface(), v) {
				return true, nil
			}
		}
	case reflect.String:
		if s, ok := v.(string); ok && strings.Contains(lv.String(), s) {
			return true, nil
		}
	}
	return false, nil
}

func indent(spaces int, s string) (string, error) {
	if spaces < 0 {
		return "", fmt.Errorf("indent value must be a positive integer")
	}
	prefix := strings.Repeat(" ", spaces)
	var out strings.Builder
	start := true
	for _, c := range []byte(s) {
		if start && c != '\n' {
			out.WriteString(prefix)
		}
		out.WriteByte(c)
		start = c == '\n'
	}
	return out.String(), nil
}

func parseInt(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	r, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parseInt: %w", err)
	}
	return r, nil
}

func loop(args ...any) ([]int64, error) {
	to64 := func(v any) (int64, error) {
		rv, kind, err := number(v)
		if err == nil {
			return toInt(rv, kind), nil
		}
		if s, ok := v.(string); ok {
			return parseInt(s)
		}
		return 0, fmt.Errorf("loop: bad argument type: %T", v)
	}
	var from, to any
	switch len(args) {
	case 1:
		from, to = 0, args[0]
	case 2:
		from, to = args[0], args[1]
	default:
		return nil, fmt.Errorf("loop: wrong number of arguments, expected 1 or 2, but got %d", len(args))
	}
	start, err := to64(from)
	if err != nil {
		return nil, err
	}
	stop, err := to64(to)
	if err != nil {
		return nil, err
	}
	out := []int64{}
	for i := start; i < stop; i++ {
		out = append(out, i)
	}
	return out, nil
}

func byTag(services []*HealthService) (map[string][]*HealthService, error) {
	m := map[string][]*HealthService{}
	for _, s := range services {
		for _, t := range s.Tags {
			m[t] = append(m[t], s)
		}
	}
	return m, nil
}

func funcMap(s *state) template.FuncMap {
	env := func(name string) (string, error) { return s.in.Env[name], nil }
	return template.FuncMap{
		// data
		"env": env,
		"mustEnv": func(name string) (string, error) {
			if v := s.in.Env[name]; v != "" {
				return v, nil
			}
			return "", fmt.Errorf("required environment variable %s is empty", name)
		},
		"envOrDefault": func(name, def string) (string, error) {
			if v, ok := s.in.Env[name]; ok {
				return v, nil
			}
			return def, nil
		},
		"nomadVar":       s.nomadVar,
		"nomadVarExists": s.nomadVarExists,
		"nomadVarList":   s.nomadVarList,
		"service":        s.service,
		"services":       s.services,
		"key":            s.key,
		"keyOrDefault":   s.keyOrDefault,
		"keyExists":      s.keyExists,
		"secret":         s.secret,
		// math
		"add":      arith("add", func(a, b float64) float64 { return a + b }, func(a, b int64) (int64, error) { return a + b, nil }),
		"subtract": arith("subtract", func(a, b float64) float64 { return a - b }, func(a, b int64) (int64, error) { return a - b, nil }),
		"multiply": arith("multiply", func(a, b float64) float64 { return a * b }, func(a, b int64) (int64, error) { return a * b, nil }),
		"divide": arith("divide", func(a, b float64) float64 { return a / b }, func(a, b int64) (int64, error) {
			if b == 0 {
				return 0, fmt.Errorf("divide: division by 0")
			}
			return a / b, nil
		}),
		"modulo": arith("modulo", func(a, b float64) float64 { return float64(int64(a) % int64(b)) }, func(a, b int64) (int64, error) {
			if b == 0 {
				return 0, fmt.Errorf("modulo: division by 0")
			}
			return a % b, nil
		}),
		// strings and conversions
		"toJSON": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(bytes.TrimSpace(b)), err
		},
		"toJSONPretty": func(v any) (string, error) {
			b, err := json.MarshalIndent(v, "", "  ")
			return string(bytes.TrimSpace(b)), err
		},
		"toLower":    func(s string) (string, error) { return strings.ToLower(s), nil },
		"toUpper":    func(s string) (string, error) { return strings.ToUpper(s), nil },
		"trimSpace":  func(s string) (string, error) { return strings.TrimSpace(s), nil },
		"trim":       func(cut, s string) (string, error) { return strings.Trim(s, cut), nil },
		"trimPrefix": func(p, s string) (string, error) { return strings.TrimPrefix(s, p), nil },
		"trimSuffix": func(p, s string) (string, error) { return strings.TrimSuffix(s, p), nil },
		"split": func(sep, s string) ([]string, error) {
			if s = strings.TrimSpace(s); s == "" {
				return []string{}, nil
			}
			return strings.Split(s, sep), nil
		},
		"join":       func(sep string, a []string) (string, error) { return strings.Join(a, sep), nil },
		"replaceAll": func(from, to, s string) (string, error) { return strings.ReplaceAll(s, from, to), nil },
		"regexReplaceAll": func(re, repl, s string) (string, error) {
			c, err := regexp.Compile(re)
			if err != nil {
				return "", err
			}
			return c.ReplaceAllString(s, repl), nil
		},
		"regexMatch": func(re, s string) (bool, error) {
			c, err := regexp.Compile(re)
			if err != nil {
				return false, err
			}
			return c.MatchString(s), nil
		},
		"contains": func(v, l any) (bool, error) { return in(l, v) },
		"in":       in,
		"parseInt": parseInt,
		"parseUint": func(s string) (uint64, error) {
			if s == "" {
				return 0, nil
			}
			return strconv.ParseUint(s, 10, 64)
		},
		"parseBool": func(s string) (bool, error) {
			if s == "" {
				return false, nil
			}
			return strconv.ParseBool(s)
		},
		"parseFloat": func(s string) (float64, error) {
			if s == "" {
				return 0, nil
			}
			return strconv.ParseFloat(s, 64)
		},
		"parseJSON": func(s string) (any, error) {
			if s == "" {
				return map[string]any{}, nil
			}
			var v any
			err := json.Unmarshal([]byte(s), &v)
			return v, err
		},
		"base64Encode": func(s string) (string, error) { return base64.StdEncoding.EncodeToString([]byte(s)), nil },
		"base64Decode": func(s string) (string, error) {
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return "", fmt.Errorf("base64Decode: %w", err)
			}
			return string(b), nil
		},
		"base64URLEncode": func(s string) (string, error) { return base64.URLEncoding.EncodeToString([]byte(s)), nil },
		"base64URLDecode": func(s string) (string, error) {
			b, err := base64.URLEncoding.DecodeString(s)
			if err != nil {
				return "", fmt.Errorf("base64URLDecode: %w", err)
			}
			return string(b), nil
		},
		"indent": indent,
		"loop":   loop,
		"byTag":  byTag,
	}
}

func reply(v any, code int) {
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
	os.Exit(code)
}

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		reply(map[string]string{"error": "reading stdin: " + err.Error()}, 2)
	}
	var in input
	if err := json.Unmarshal(raw, &in); err != nil {
		reply(map[string]string{"error": "the input is not the expected JSON: " + err.Error()}, 2)
	}
	s := &state{in: in, seen: map[string]bool{}}
	left, right := in.LeftDelimiter, in.RightDelimiter
	tmpl := template.New("template").Delims(left, right).Funcs(funcMap(s))
	if in.ErrorOnMissingKey {
		tmpl = tmpl.Option("missingkey=error")
	}
	tmpl, err = tmpl.Parse(in.Template)
	if err != nil {
		reply(map[string]string{"error": "parse: " + err.Error()}, 1)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, nil); err != nil {
		reply(map[string]string{"error": "execute: " + err.Error()}, 1)
	}
	if len(s.missing) > 0 {
		reply(map[string][]string{"blocked": s.missing}, 0)
	}
	reply(map[string]string{"rendered": out.String()}, 0)
}
