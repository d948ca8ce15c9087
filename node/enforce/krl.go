package enforce

import (
	"encoding/binary"
	"slices"
	"time"

	"golang.org/x/crypto/ssh"
)

// The OpenSSH KRL format (PROTOCOL.krl in OpenSSH's sources): a header,
// then sections. midfs writes one certificates section per user CA that
// revokes by key ID: every certificate that CA signed for a locked bot
// (key ID bot-NAME), whenever it was issued.
const (
	krlMagic         = 0x5353484b524c0a00 // "SSHKRL\n\0"
	krlFormatVersion = 1

	krlSectionCertificates = 1
	krlSectionCertKeyID    = 0x23
)

// KRL renders a KRL that revokes the certificates with key ID bot-NAME,
// for each bot, signed by any of cas. version is the KRL's version
// (OpenSSH only shows it); generated is written as its date. With no bots
// or no CAs it is a valid KRL that revokes nothing: sshd refuses every
// login when its RevokedKeys file is missing or unreadable, so the node
// always writes one.
func KRL(cas []ssh.PublicKey, bots []string, version uint64, generated time.Time) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint64(b, krlMagic)
	b = binary.BigEndian.AppendUint32(b, krlFormatVersion)
	b = binary.BigEndian.AppendUint64(b, version)
	b = binary.BigEndian.AppendUint64(b, uint64(max(generated.Unix(), 0)))
	b = binary.BigEndian.AppendUint64(b, 0) // flags: none defined
	b = appendString(b, nil)                // reserved
	b = appendString(b, []byte("midfs locks"))
	if len(bots) == 0 {
		return b
	}
	// Sorted, as ssh-keygen writes them, so equal locks give equal bytes.
	ids := make([]string, len(bots))
	for i, bot := range bots {
		ids[i] = botPrefix + bot
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var keyIDs []byte
	for _, id := range ids {
		keyIDs = appendString(keyIDs, []byte(id))
	}
	for _, ca := range cas {
		var sec []byte
		sec = appendString(sec, ca.Marshal())
		sec = appendString(sec, nil) // reserved
		sec = append(sec, krlSectionCertKeyID)
		sec = appendString(sec, keyIDs)
		b = append(b, krlSectionCertificates)
		b = appendString(b, sec)
	}
	return b
}

// appendString appends an SSH wire string: a uint32 length, then s.
func appendString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}
