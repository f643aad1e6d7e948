# yaml2kv.awk - flatten the YAML subset used by cloud-init seeds into "path<TAB>value" lines.
# Runs under busybox awk in the kumo-tiny guest (and on the build host in unit tests).
# Supported: block maps, block sequences (incl. "- key: v" items, PyYAML's "- " at the parent's
# indent), plain/'single'/"double" quoted scalars, folded continuation lines, flow collections
# ({a: b}, [x, y], JSON), comments, "---". Block scalars (| >) are kept, joined with spaces.
# Paths join keys and list indexes with dots: ethernets.eth0.addresses.0 <TAB> 10.0.0.5/24.
# On malformed input: prints "line N: reason" to stderr and exits 1.

function fail(msg) { printf "line %d: %s\n", NR, msg > "/dev/stderr"; failed = 1; exit 1 }
function ltrim(s) { sub(/^[ \t]+/, "", s); return s }
function rtrim(s) { sub(/[ \t]+$/, "", s); return s }
function trim(s) { return rtrim(ltrim(s)) }
function join(p, k) { return p == "" ? k : p "." k }
function emit(path, v) { if (path == "") fail("scalar document, expected a mapping"); print path "\t" v; nout++ }

# Strip a trailing " #comment" outside quotes and decode a scalar (quotes, escapes).
function scalar(s,    c, q) {
  s = trim(s)
  c = substr(s, 1, 1)
  if (c == "'") {
    if (s !~ /'$/ || length(s) < 2) fail("unterminated single-quoted string")
    s = substr(s, 2, length(s) - 2); gsub(/''/, "'", s); return s
  }
  if (c == "\"") {
    if (s !~ /"$/ || s ~ /\\"$/ && s !~ /\\\\"$/ || length(s) < 2) fail("unterminated double-quoted string")
    s = substr(s, 2, length(s) - 2)
    gsub(/\\"/, "\"", s); gsub(/\\n/, " ", s); gsub(/\\t/, " ", s); gsub(/\\\\/, "\\", s); return s
  }
  if (s == "~" || s == "null") return ""
  sub(/[ \t]+#.*$/, "", s)
  return s
}

# A quoted scalar still open at the end of this text (so the next line continues it)?
function open_quote(s,    c, body) {
  s = trim(s); c = substr(s, 1, 1)
  if (c == "'") { body = substr(s, 2); gsub(/''/, "", body); return index(body, "'") == 0 }
  if (c == "\"") { body = substr(s, 2); gsub(/\\\\/, "", body); gsub(/\\"/, "", body); return index(body, "\"") == 0 }
  return 0
}

# Index of the ": " (or final ":") separating a key, outside quotes; 0 if none.
function keysep(s,    i, c, q, n) {
  n = length(s); q = ""
  for (i = 1; i <= n; i++) {
    c = substr(s, i, 1)
    if (q != "") { if (c == q) q = ""; continue }
    if ((c == "'" || c == "\"") && i == 1) { q = c; continue }
    if (c == ":" && (i == n || substr(s, i + 1, 1) == " ")) return i
    if (c == "#" && i > 1 && substr(s, i - 1, 1) == " ") return 0
  }
  return 0
}

# ---- flow collections: recursive descent over fs[] from fpos ----
function fskip() { while (fpos <= flen && substr(ftxt, fpos, 1) ~ /[ \t\n]/) fpos++ }
function ftoken(stops,    c, q, start, out) {
  fskip(); c = substr(ftxt, fpos, 1)
  if (c == "'" || c == "\"") {
    q = c; start = fpos; fpos++
    while (fpos <= flen) {
      c = substr(ftxt, fpos, 1)
      if (c == "\\" && q == "\"") { fpos += 2; continue }
      if (c == q) { if (q == "'" && substr(ftxt, fpos + 1, 1) == "'") { fpos += 2; continue } break }
      fpos++
    }
    if (fpos > flen) fail("unterminated quoted string in flow collection")
    fpos++
    return scalar(substr(ftxt, start, fpos - start))
  }
  start = fpos
  while (fpos <= flen && index(stops, substr(ftxt, fpos, 1)) == 0) fpos++
  return scalar(substr(ftxt, start, fpos - start))
}
function fvalue(path,    c) {
  fskip(); c = substr(ftxt, fpos, 1)
  if (c == "{") { fmap(path); return }
  if (c == "[") { fseq(path); return }
  if (fpos > flen) fail("unexpected end of flow collection")
  emit(path, ftoken(",]}"))
}
function fmap(path,    k, c) {
  fpos++
  while (1) {
    fskip(); c = substr(ftxt, fpos, 1)
    if (c == "}") { fpos++; return }
    if (fpos > flen) fail("unterminated { mapping")
    k = fkey()
    fskip()
    if (substr(ftxt, fpos, 1) != ":") fail("expected ':' after key '" k "' in flow mapping")
    fpos++
    fvalue(join(path, k))
    fskip(); c = substr(ftxt, fpos, 1)
    if (c == ",") { fpos++; continue }
    if (c == "}") { fpos++; return }
    fail("expected ',' or '}' in flow mapping")
  }
}
# keys end at ':' followed by space/end or at a quote end
function fkey(    c, start) {
  fskip(); c = substr(ftxt, fpos, 1)
  if (c == "'" || c == "\"") return ftoken(":")
  start = fpos
  while (fpos <= flen) {
    c = substr(ftxt, fpos, 1)
    if (c == ":" && substr(ftxt, fpos + 1, 1) ~ /^([ \t\n,}]|)$/) break
    if (c == "}" || c == ",") fail("missing ':' in flow mapping")
    fpos++
  }
  return trim(substr(ftxt, start, fpos - start))
}
function fseq(path,    n, c) {
  fpos++; n = 0
  while (1) {
    fskip(); c = substr(ftxt, fpos, 1)
    if (c == "]") { fpos++; return }
    if (fpos > flen) fail("unterminated [ sequence")
    fvalue(join(path, n)); n++
    fskip(); c = substr(ftxt, fpos, 1)
    if (c == ",") { fpos++; continue }
    if (c == "]") { fpos++; return }
    fail("expected ',' or ']' in flow sequence")
  }
}
function flow_parse(path, txt,    c) {
  ftxt = txt; flen = length(txt); fpos = 1
  fvalue(path)
  fskip()
  if (fpos <= flen) { c = substr(ftxt, fpos); if (trim(c) !~ /^#/) fail("text after flow collection: " c) }
}
function flow_balanced(s,    i, c, q, d) {
  d = 0; q = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (q != "") { if (c == "\\" && q == "\"") { i++; continue } if (c == q) q = ""; continue }
    if (c == "'" || c == "\"") q = c
    else if (c == "{" || c == "[") d++
    else if (c == "}" || c == "]") d--
  }
  return d <= 0 && q == ""
}

# ---- pending scalar / flow / block-scalar values (may continue on following lines) ----
function flush(    v) {
  if (pkind == "scalar") emit(ppath, scalar(pval))
  else if (pkind == "flow") { if (!flow_balanced(pval)) fail("unterminated flow collection"); flow_parse(ppath, pval) }
  else if (pkind == "block") emit(ppath, pval)
  else if (pkind == "child") emit(ppath, "")
  pkind = ""
}
function set_value(path, v, ind) {
  v = trim(v)
  if (v == "" ) { pkind = "child"; ppath = path; pind = ind; return }
  if (v ~ /^[|>][-+0-9]*([ \t]+#.*)?$/) { pkind = "block"; ppath = path; pind = ind; pval = ""; return }
  if (v ~ /^[\[{]/) { pkind = "flow"; ppath = path; pind = ind; pval = v; return }
  if (v ~ /^[&*!]/) fail("anchors, aliases and tags are not supported")
  pkind = "scalar"; ppath = path; pind = ind; pval = v
}

function push(kind, path, ind) { sp++; skind[sp] = kind; spath[sp] = path; sind[sp] = ind; scount[sp] = 0 }

# A "key: value" (or "key:") at column ind inside the map on top of the stack.
function map_entry(content, ind,    i, k, v) {
  i = keysep(content)
  if (i == 0) fail("expected 'key: value', got '" content "'")
  k = scalar(substr(content, 1, i - 1))
  if (k == "") fail("empty key")
  v = substr(content, i + 1)
  set_value(join(spath[sp], k), v, ind)
}

BEGIN { sp = 0; pkind = ""; nout = 0; failed = 0 }
{
  line = $0
  sub(/\r$/, "", line)
  if (pkind == "block") {
    if (line ~ /^[ \t]*$/) { pval = pval (pval == "" ? "" : " "); next }
    match(line, /^ */)
    if (RLENGTH > pind) { pval = pval (pval == "" || pval ~ / $/ ? "" : " ") trim(line); next }
    pval = rtrim(pval); flush()
  }
  if (line ~ /^[ \t]*(#.*)?$/) next
  if (line ~ /^(---|\.\.\.)([ \t].*)?$/) { if (sp > 0 || pkind != "") fail("only one YAML document is supported"); next }
  if (line ~ /^ *\t/) fail("tab in indentation")
  match(line, /^ */); ind = RLENGTH; content = substr(line, ind + 1)

  # continuation of a multi-line scalar or flow collection
  if (pkind == "flow" && !flow_balanced(pval)) { pval = pval " " trim(content); next }
  if (pkind == "scalar" && (open_quote(pval) || ind > pind && content !~ /^- / && content != "-")) { pval = pval " " trim(content); next }

  if (pkind == "child") {
    if ((content ~ /^- / || content == "-") && ind >= pind) { push("seq", ppath, ind); pkind = "" }
    else if (ind > pind) { push("map", ppath, ind); pkind = "" }
    else flush()
  } else if (pkind != "") flush()

  if (sp == 0) {
    if (content ~ /^\[/ || content ~ /^- / || content == "-") fail("document is a list, expected a mapping")
    if (substr(content, 1, 1) == "{") { set_value("", content, -1); next }
    push("map", "", ind)
  }
  while (sp > 0 && (sind[sp] > ind || (sind[sp] == ind && skind[sp] == "seq" && content !~ /^- / && content != "-"))) sp--
  if (sp == 0 || sind[sp] != ind) fail("bad indentation")

  if (skind[sp] == "seq") {
    if (content !~ /^- / && content != "-") fail("expected '- item' in sequence")
    item = join(spath[sp], scount[sp]); scount[sp]++
    rest = substr(content, 3)
    sub(/^ +/, "", rest)
    if (rest == "") { set_value(item, "", ind); next }
    if (rest !~ /^['"\[{]/ && keysep(rest) > 0) {
      push("map", item, ind + length(content) - length(rest))
      map_entry(rest, sind[sp]); next
    }
    set_value(item, rest, ind); next
  }
  if (content ~ /^- / || content == "-") fail("unexpected sequence item in a mapping")
  map_entry(content, ind)
}
END {
  if (failed) exit 1
  if (pkind == "flow" && !flow_balanced(pval)) { NR = NR; fail("unterminated flow collection") }
  if (pkind != "") flush()
  if (failed) exit 1
}
