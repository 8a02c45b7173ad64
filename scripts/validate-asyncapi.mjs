#!/usr/bin/env node
// Validate an AsyncAPI document with the official parser (@asyncapi/parser,
// installed into .tools/node by scripts/install-tools.sh):
//
//   node scripts/validate-asyncapi.mjs docs/asyncapi.yaml
//
// Prints the parser's diagnostics as JSON on stdout: an array of
// {severity, code, message, path, range}, severity one of error, warning,
// info, hint. Exits 1 when any diagnostic is an error (the parser then gives
// no document), 2 on a usage error or a parser that is not installed, else 0.
// ASYNCAPI_PARSER_DIR overrides where the parser is installed (the --prefix
// of `npm install`).

import { createRequire } from "node:module";
import { resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const PREFIX = process.env.ASYNCAPI_PARSER_DIR || resolve(ROOT, ".tools", "node");
const SEVERITIES = ["error", "warning", "info", "hint"];

function loadParser() {
  const require = createRequire(resolve(PREFIX, "package.json"));
  try {
    return require("@asyncapi/parser");
  } catch (error) {
    console.error(
      `@asyncapi/parser is not installed in ${PREFIX}: run scripts/install-tools.sh ` +
        `(${error.code || error.message})`,
    );
    process.exit(2);
  }
}

async function main(argv) {
  if (argv.length !== 1) {
    console.error("usage: node scripts/validate-asyncapi.mjs FILE");
    return 2;
  }
  const { Parser, fromFile } = loadParser();
  const parser = new Parser();
  const { diagnostics } = await fromFile(parser, resolve(argv[0])).parse();
  const shown = diagnostics.map((d) => ({
    severity: SEVERITIES[d.severity] ?? String(d.severity),
    code: d.code,
    message: d.message,
    path: d.path,
    range: d.range,
  }));
  console.log(JSON.stringify(shown, null, 2));
  return shown.some((d) => d.severity === "error") ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
