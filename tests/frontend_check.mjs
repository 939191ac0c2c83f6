// Opens every workflow in ComfyUI's real front end (headless Chromium) and reports what the front end makes of it.
// Run by tests/frontend_check.py, which starts the server and checks the report:
//   node tests/frontend_check.mjs <server url> <report.json> <screenshot folder> <workflow.json>...
// PLAYWRIGHT_DIR names the folder where `npm install playwright-core@1` ran (kept out of the repository);
// CHROMIUM the browser (default /usr/bin/chromium).
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";

const require = createRequire(join(process.env.PLAYWRIGHT_DIR ?? "/tmp/fe", "package.json"));
const { chromium } = require("playwright-core");
const [url, reportPath, shotDir, ...workflows] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"],
});
const page = await browser.newPage({ viewport: { width: 1920, height: 1080 } });
const consoleErrors = [];
page.on("console", (message) => { if (message.type() === "error") consoleErrors.push(message.text()); });
page.on("pageerror", (error) => consoleErrors.push(String(error)));
await page.goto(url);
await page.waitForFunction(() => window.app?.graph && window.LiteGraph, null, { timeout: 120000 });
await page.waitForTimeout(2000);

const report = {};
for (const path of workflows) {
  const workflow = JSON.parse(readFileSync(path, "utf8"));
  await page.keyboard.press("Escape");  // a first-run dialog, if any
  const result = await page.evaluate(async (workflow) => {
    const app = window.app;
    await app.loadGraphData(workflow);
    const frame = () => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    app.canvas.setDirty(true, true);
    await frame();  // drawn once: nodes have their final sizes (the front end grows a node its widgets overflow)
    const registered = window.LiteGraph.registered_node_types;
    const title = window.LiteGraph.NODE_TITLE_HEIGHT;
    const nodes = app.graph._nodes.map((node) => {
      // the box as drawn: the title bar sits above pos
      const rect = [node.pos[0], node.pos[1] - title, node.size[0], node.size[1] + title];
      return {
        id: node.id, type: node.type, registered: node.type in registered,
        box: [rect[0], rect[1], rect[2], rect[3]],
        widgets: (node.widgets ?? []).map((widget) => ({ name: widget.name, type: widget.type,
                                                         value: widget.value,
                                                         display: widget.options?.serialize === false })),
      };
    });
    const prompt = await app.graphToPrompt();
    // fit the whole graph in the viewport for the screenshot
    const boxes = nodes.map((node) => node.box);
    const left = Math.min(...boxes.map((b) => b[0])), top = Math.min(...boxes.map((b) => b[1]));
    const right = Math.max(...boxes.map((b) => b[0] + b[2])), bottom = Math.max(...boxes.map((b) => b[1] + b[3]));
    const canvas = app.canvas, margin = 40;
    const scale = Math.min((canvas.canvas.width - 2 * margin) / (right - left),
                           (canvas.canvas.height - 2 * margin) / (bottom - top));
    canvas.ds.scale = scale;
    canvas.ds.offset = [margin / scale - left, margin / scale - top];
    canvas.setDirty(true, true);
    await frame();
    return { nodes, prompt: prompt.output };
  }, workflow);
  await page.waitForTimeout(500);
  const shot = join(shotDir, basename(path).replace(/\.json$/, ".png"));
  await page.screenshot({ path: shot });
  report[basename(path)] = { ...result, screenshot: shot };
}
report.console_errors = consoleErrors;
writeFileSync(reportPath, JSON.stringify(report));
await browser.close();
