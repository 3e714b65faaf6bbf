// Validate prometheus-operator custom resources offline against the CRDs' OpenAPI schemas,
// as compiled by @kubernetes-models/prometheus-operator (installed by scripts/setup.sh into
// .tools/npm). Usage: node validate_crs.mjs MODELS_DIR FILE.json — FILE holds a JSON list of
// objects. Prints one line per invalid or unknown object; exits 1 if there is any.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [models, file] = process.argv.slice(2);
const objects = JSON.parse(readFileSync(file, "utf8"));
let failed = 0;
for (const obj of objects) {
  const [group, version] = String(obj.apiVersion).split("/");
  const where = `${models}/${group}/${version}/${obj.kind}.js`;
  let Kind;
  try {
    Kind = (await import(pathToFileURL(where)))[obj.kind];
  } catch (error) {
    console.log(`${obj.kind} ${obj.apiVersion}: no schema (${error.message})`);
    failed++;
    continue;
  }
  try {
    new Kind(obj).validate();
  } catch (error) {
    console.log(`${obj.kind}/${obj.metadata?.name}: ${error.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
