#!/usr/bin/env node
// http_split.js — reads the raw bytes a server sent on one connection
// (stdin) and prints each HTTP/1.1 response as one JSON line:
//   {"status":200,"headers":{"content-type":"…",…},"body":"…"}
// framed by Content-Length (every Cairn response but SSE has one). A
// trailing incomplete response is printed with "incomplete":true, and bytes
// that are not a response as {"garbage":"…"}, so a test sees everything.
'use strict';

const fs = require('fs');

const buf = fs.readFileSync(0);
let off = 0;
while (off < buf.length) {
    const end = buf.indexOf('\r\n\r\n', off, 'latin1');
    if (end < 0 || !buf.slice(off, off + 5).toString('latin1').startsWith('HTTP/')) {
        console.log(JSON.stringify({ garbage: buf.slice(off).toString('latin1') }));
        break;
    }
    const lines = buf.slice(off, end).toString('latin1').split('\r\n');
    const status = Number(lines[0].split(' ')[1]);
    const headers = {};
    for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    const n = Number(headers['content-length'] || 0);
    const body = buf.slice(end + 4, end + 4 + n);
    const out = { status, reason: lines[0].split(' ').slice(2).join(' '), headers, body: body.toString('utf8') };
    if (body.length < n) out.incomplete = true;
    console.log(JSON.stringify(out));
    off = end + 4 + n;
}
