#!/usr/bin/env node
// stripe_sign.js — prints a Stripe-Signature header value for a webhook body,
// computed by the official Stripe library (stripe.webhooks
// .generateTestHeaderString), so the tests check Cairn against Stripe's own
// signing rather than against a re-implementation.
//
//   node stripe_sign.js --payload-file BODY --timestamp UNIX_S \
//        --secret-file F [--secret-file F2 …]
//
// With several secrets the header carries one v1= signature per secret, in
// the order given ("t=…,v1=…,v1=…"), as Stripe sends during a secret roll.
// --verify-secret-file F instead checks the header given with --header
// against F with stripe.webhooks.constructEvent (exit 0: valid).
'use strict';

const fs = require('fs');
const Stripe = require('stripe');

function usage(msg) {
    process.stderr.write(`stripe_sign.js: ${msg}\n`);
    process.exit(2);
}

const opts = { secrets: [] };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i], value = argv[i + 1];
    if (value === undefined) usage(`${name} needs a value`);
    if (name === '--payload-file') opts.payload = fs.readFileSync(value, 'utf8');
    else if (name === '--timestamp') opts.timestamp = Number(value);
    else if (name === '--secret-file') opts.secrets.push(fs.readFileSync(value, 'utf8').trim());
    else if (name === '--verify-secret-file') opts.verify = fs.readFileSync(value, 'utf8').trim();
    else if (name === '--header') opts.header = value;
    else usage(`unknown option ${name}`);
}
if (opts.payload === undefined) usage('--payload-file is required');

const webhooks = Stripe.webhooks;

if (opts.verify !== undefined) {
    try {
        webhooks.constructEvent(opts.payload, opts.header, opts.verify);
        process.exit(0);
    } catch (e) {
        process.stderr.write(`${e.message}\n`);
        process.exit(1);
    }
}

if (!Number.isInteger(opts.timestamp)) usage('--timestamp must be an integer (Unix seconds)');
if (opts.secrets.length === 0) usage('at least one --secret-file');

const parts = [];
for (const secret of opts.secrets) {
    const header = webhooks.generateTestHeaderString({
        payload: opts.payload,
        secret,
        timestamp: opts.timestamp,
    });
    // "t=TS,v1=HEX": keep t= once and every v1=.
    for (const kv of header.split(',')) {
        if (kv.startsWith('t=')) {
            if (parts.length === 0) parts.push(kv);
        } else {
            parts.push(kv);
        }
    }
}
process.stdout.write(parts.join(',') + '\n');
