// Package audit owns what the broker does with audit records beyond storing
// them: redacting free text before it is stored or logged, streaming the
// hash-chained trail as JSON lines, and verifying a copy of it.
//
// # Basics
//
// Redact is applied to text the broker did not write itself (an agent's
// stated purpose, a reason given by an admin) before it goes into an audit
// record or a log line. It is idempotent, so text that has been through it
// once may safely go through it again.
//
// A Streamer copies the store's trail to an io.Writer, one json.Marshal'd
// store.AuditRecord a line, in Seq order. OpenFile makes one that appends to a
// file and resumes after the last record already in it, so a restart neither
// loses nor duplicates records. VerifyLines checks such a copy on its own: the
// hash of every record and the chain between them.
//
// # Caveats
//
// Redact recognises shapes, not meaning: a secret in an unknown format that
// is short or of low entropy gets through, and a long random-looking word that
// is no secret is redacted. It keeps at most 64 KiB of its input.
//
// The chain shows records edited, inserted or removed, not a tail cut off or
// a trail rewritten from some record on with fresh hashes: compare the last
// record of a copy with the live store's head (and keep the head somewhere the
// broker cannot rewrite) to see those.
package audit
