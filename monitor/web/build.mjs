// Copy the built charting library into the static folder the monitor serves.
// Usage (from monitor/web):  npm ci && npm run build
// The copied files are committed, so running the monitor never needs npm or a CDN.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static", "vendor");
mkdirSync(out, { recursive: true });

const files = [
  ["node_modules/uplot/dist/uPlot.iife.min.js", "uPlot.iife.min.js"],
  ["node_modules/uplot/dist/uPlot.min.css", "uPlot.min.css"],
  ["node_modules/uplot/LICENSE", "uPlot.LICENSE"],
];
for (const [src, dst] of files) {
  copyFileSync(join(here, src), join(out, dst));
}
const version = JSON.parse(readFileSync(join(here, "node_modules/uplot/package.json"), "utf8")).version;
console.log(`copied uPlot ${version} into ${out}`);
