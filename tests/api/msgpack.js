#!/usr/bin/env node
// msgpack.js — reads NDJSON on stdin and writes each object msgpack-encoded,
// concatenated, on stdout: the body of an application/msgpack batch. A tiny
// encoder (nil, bool, int, float64, str, array, map) so the tests need no
// msgpack package; integers within ±2^53, maps in the JSON's key order.
'use strict';

const fs = require('fs');

function enc(v, out) {
    if (v === null) out.push(Buffer.from([0xc0]));
    else if (v === false) out.push(Buffer.from([0xc2]));
    else if (v === true) out.push(Buffer.from([0xc3]));
    else if (typeof v === 'number' && Number.isInteger(v)) {
        if (v >= 0 && v < 128) out.push(Buffer.from([v]));
        else if (v < 0 && v >= -32) out.push(Buffer.from([v & 0xff]));
        else {
            const b = Buffer.alloc(9);
            b[0] = v >= 0 ? 0xcf : 0xd3;
            if (v >= 0) b.writeBigUInt64BE(BigInt(v), 1);
            else b.writeBigInt64BE(BigInt(v), 1);
            out.push(b);
        }
    } else if (typeof v === 'number') {
        const b = Buffer.alloc(9);
        b[0] = 0xcb;
        b.writeDoubleBE(v, 1);
        out.push(b);
    } else if (typeof v === 'string') {
        const s = Buffer.from(v, 'utf8');
        const h = Buffer.alloc(5);
        h[0] = 0xdb;
        h.writeUInt32BE(s.length, 1);
        out.push(s.length < 32 ? Buffer.from([0xa0 | s.length]) : h, s);
    } else if (Array.isArray(v)) {
        const h = Buffer.alloc(5);
        h[0] = 0xdd;
        h.writeUInt32BE(v.length, 1);
        out.push(h);
        for (const x of v) enc(x, out);
    } else {
        const keys = Object.keys(v);
        const h = Buffer.alloc(5);
        h[0] = 0xdf;
        h.writeUInt32BE(keys.length, 1);
        out.push(h);
        for (const k of keys) {
            enc(k, out);
            enc(v[k], out);
        }
    }
}

const out = [];
for (const line of fs.readFileSync(0, 'utf8').split('\n')) {
    if (line.trim() !== '') enc(JSON.parse(line), out);
}
process.stdout.write(Buffer.concat(out));
