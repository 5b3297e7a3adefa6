// The guide as a reader sees it: every chapter of `bilevel::guide` opened in headless Chromium,
// offline. Run by `.ci/run` after `cargo doc`:
//
//   node .ci/guide-check.mjs DOC_DIR NODE_MODULES OUT_DIR
//
// DOC_DIR is rustdoc's output (target/doc), NODE_MODULES holds `katex` and `playwright-core`
// from npm, OUT_DIR receives a screenshot of the first chapter. The pages keep the header the
// published docs use (KaTeX from a CDN); every request to the CDN is answered from the npm
// package of the same version, and every other request that leaves the machine fails the check,
// so a page that needs the network to render fails here.
//
// Checked on every guide page: no script error; every <div class="math"> rendered by KaTeX
// (a .katex element, no .katex-error) and no wider than the text column at 1200 px; no TeX left in the page's text outside code and rendered
// math; the chapters named in MUST_HAVE_MATH do have math; every link inside the documentation
// points to a file that exists and, with a #fragment, to an element with that id.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";

const [docDir, nodeModules, outDir] = process.argv.slice(2).map((p) => path.resolve(p));
if (!outDir) {
  console.error("usage: node guide-check.mjs DOC_DIR NODE_MODULES OUT_DIR");
  process.exit(2);
}
const require = createRequire(path.join(nodeModules, "noop.js"));
const { chromium } = require("playwright-core");
const katexDist = path.join(nodeModules, "katex", "dist");
const katexVersion = require("katex/package.json").version;

const guideDir = path.join(docDir, "bilevel", "guide");
const chapters = fs
  .readdirSync(guideDir, { withFileTypes: true })
  .filter((e) => e.isDirectory() && fs.existsSync(path.join(guideDir, e.name, "index.html")))
  .map((e) => e.name)
  .sort();
const pages = [path.join(guideDir, "index.html"), ...chapters.map((c) => path.join(guideDir, c, "index.html"))];
const MUST_HAVE_MATH = ["surrogates", "nested"];
const FIRST_CHAPTER = "surrogates";
for (const c of [...MUST_HAVE_MATH, FIRST_CHAPTER]) {
  if (!chapters.includes(c)) fail(`the guide has no chapter ${c} (chapters: ${chapters.join(", ")})`);
}

const problems = [];
function fail(msg) {
  console.error(`guide check: ${msg}`);
  process.exit(1);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--allow-file-access-from-files"],
});
const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
let servedFromNpm = 0;
// The CDN header names katex@X.Y.Z; serve the same path from the npm package of that version.
await context.route(/^https?:\/\//, async (route) => {
  const url = route.request().url();
  const m = url.match(/^https:\/\/cdn\.jsdelivr\.net\/npm\/katex@([0-9.]+)\/dist\/(.+)$/);
  if (!m) {
    problems.push(`a page asked the network for ${url}`);
    return route.abort();
  }
  if (m[1] !== katexVersion) problems.push(`the header asks for KaTeX ${m[1]}, npm gave ${katexVersion}`);
  const file = path.join(katexDist, m[2].split("?")[0]);
  if (!fs.existsSync(file)) {
    problems.push(`KaTeX ${katexVersion} has no dist/${m[2]}`);
    return route.abort();
  }
  servedFromNpm += 1;
  return route.fulfill({ path: file });
});

const links = new Map(); // target file URL (with fragment) -> first page that links to it
let mathBlocks = 0;
for (const file of pages) {
  const name = path.relative(guideDir, file);
  const page = await context.newPage();
  page.on("pageerror", (e) => problems.push(`${name}: script error: ${e.message}`));
  await page.goto(pathToFileURL(file).href, { waitUntil: "load" });
  const seen = await page.evaluate(() => {
    const main = document.querySelector("#main-content") ?? document.body;
    const blocks = [...main.querySelectorAll("div.math")];
    const unrendered = blocks.filter((b) => !b.querySelector(".katex")).map((b) => b.textContent.trim());
    const errors = [...main.querySelectorAll(".katex-error")].map((e) => e.getAttribute("title") ?? e.textContent);
    // A display formula wider than the text column is cut off or scrolls: too wide to read.
    const wide = [...main.querySelectorAll(".katex-display")]
      .filter((d) => d.scrollWidth > d.clientWidth + 1)
      .map((d) => (d.querySelector("annotation") ?? d).textContent.trim());
    const clone = main.cloneNode(true);
    clone.querySelectorAll("pre, code, .katex").forEach((e) => e.remove());
    const text = clone.textContent;
    const tex = (text.match(/\$\$|\\(?:frac|math[a-z]+|begin|end|hat|tilde|bar|sum|min|arg|beta|theta|ell|partial|le|ge)\b/g) ?? []);
    const hrefs = [...document.querySelectorAll("a[href]")].map((a) => a.href);
    return { blocks: blocks.length, unrendered, wide, errors, tex, hrefs, katex: typeof window.katex === "object" };
  });
  mathBlocks += seen.blocks;
  if (seen.blocks > 0 && !seen.katex) problems.push(`${name}: KaTeX did not load`);
  for (const t of seen.unrendered) problems.push(`${name}: a math block was not rendered: ${t.slice(0, 80)}`);
  for (const t of seen.wide) problems.push(`${name}: a formula is wider than the page at 1200 px: ${t.slice(0, 80)}`);
  for (const e of seen.errors) problems.push(`${name}: KaTeX error: ${e}`);
  if (seen.tex.length > 0) problems.push(`${name}: raw TeX in the page text: ${[...new Set(seen.tex)].join(" ")}`);
  const chapter = path.dirname(name);
  if (MUST_HAVE_MATH.includes(chapter) && seen.blocks === 0) problems.push(`${name}: no formulas`);
  for (const href of seen.hrefs) {
    if (href.startsWith("file:") && !links.has(href)) links.set(href, name);
  }
  if (chapter === FIRST_CHAPTER) {
    fs.mkdirSync(outDir, { recursive: true });
    await page.screenshot({ path: path.join(outDir, `guide-${FIRST_CHAPTER}.png`), fullPage: true });
  }
  await page.close();
}
await browser.close();

// Links inside the documentation: the file exists, and a #fragment names an element in it.
const ids = new Map();
for (const [href, from] of links) {
  const url = new URL(href);
  const file = fileURLToPath(url);
  const target = fs.existsSync(file) && fs.statSync(file).isDirectory() ? path.join(file, "index.html") : file;
  if (!fs.existsSync(target)) {
    problems.push(`${from}: broken link to ${path.relative(docDir, target)}`);
    continue;
  }
  const frag = decodeURIComponent(url.hash.slice(1));
  // rustdoc's source pages take line ranges (#12-30), resolved by their script, not by an id.
  const lineRange = /^\d+(-\d+)?$/.test(frag) && path.relative(docDir, target).startsWith("src" + path.sep);
  if (!frag || lineRange || !target.endsWith(".html")) continue;
  if (!ids.has(target)) {
    const html = fs.readFileSync(target, "utf8");
    ids.set(target, new Set([...html.matchAll(/\sid="([^"]+)"/g)].map((m) => m[1])));
  }
  if (!ids.get(target).has(frag)) problems.push(`${from}: link to a missing anchor ${path.relative(docDir, target)}#${frag}`);
}

if (servedFromNpm === 0 && mathBlocks > 0) problems.push("KaTeX was never requested: the header did not load it");
if (problems.length > 0) fail(`${problems.length} problem(s)\n  ${problems.join("\n  ")}`);
console.log(`guide check: ${pages.length} pages, ${mathBlocks} formulas rendered by KaTeX ${katexVersion} ` +
  `(offline, ${servedFromNpm} files from npm), ${links.size} local links resolved; ` +
  `screenshot ${path.join(path.relative(process.cwd(), outDir), `guide-${FIRST_CHAPTER}.png`)}`);
