// Parse an AsyncAPI document with the reference parser (which resolves its file $refs and
// runs the spec's rules); print every diagnostic and exit 1 on any error or warning.
import { resolve } from "node:path";
import { Parser, fromFile } from "@asyncapi/parser";

const path = resolve(process.argv[2]);
const { document, diagnostics } = await fromFile(new Parser(), path).parse();
const severity = ["error", "warning", "info", "hint"];
for (const d of diagnostics) {
  console.log(`${severity[d.severity]} ${d.code} at ${d.path.join(".")}: ${d.message}`);
}
const failing = diagnostics.filter((d) => d.severity <= 1);
if (document === undefined || failing.length > 0) {
  console.log(`${path}: ${failing.length} errors or warnings`);
  process.exit(1);
}
console.log(JSON.stringify({
  channels: Object.fromEntries(document.channels().all().map((c) => [c.id(), c.address()])),
  messages: document.allMessages().all().map((m) => m.name()),
}));
