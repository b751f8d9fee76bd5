#!/usr/bin/env node
// slow_reader.js PORT REQUEST-FILE DELAY-MS [LATE-FILE] — writes
// REQUEST-FILE's bytes on one connection to 127.0.0.1:PORT without reading
// anything, then LATE-FILE's bytes DELAY-MS/2 later (input that arrives
// after the server stopped reading), starts reading only DELAY-MS after
// connecting (so the server's answers pile up in the kernel's buffers
// meanwhile), and copies everything received to stdout
// until the server ends the connection. A reset is reported on stderr as
// "reset after N bytes" (what a client sees when a server closes with
// unread input: the kernel drops whatever answers were still queued). Ends
// by itself after 20 s at most.
'use strict';

const net = require('net');
const fs = require('fs');

const [port, file, delay, late] = process.argv.slice(2);
const chunks = [];
let got = 0;
const sock = net.connect({ host: '127.0.0.1', port: Number(port) });
sock.pause();
sock.on('connect', () => {
    sock.write(fs.readFileSync(file));
    if (late)
        setTimeout(() => sock.write(fs.readFileSync(late)), Number(delay) / 2);
    setTimeout(() => sock.resume(), Number(delay));
});
sock.on('data', (d) => {
    chunks.push(d);
    got += d.length;
});
sock.on('error', (e) => {
    process.stderr.write(`reset after ${got} bytes (${e.code})\n`);
});
sock.on('close', () => {
    process.stdout.write(Buffer.concat(chunks), () => process.exit(0));
});
setTimeout(() => {
    process.stderr.write(`gave up after 20 s (${got} bytes)\n`);
    sock.destroy();
}, 20000).unref();
