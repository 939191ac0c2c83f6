// Shows the text report of the Wan Express nodes that write one (Inspect, Convert, LoRA) on the node itself, in a
// read-only box that is not saved with the workflow, the way core's Preview Any shows its value.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const REPORTING = ["WanExpressInspect", "WanExpressConvert", "WanExpressLoRA"];
const WIDGET = "report_text";

app.registerExtension({
  name: "WanExpress.ReportText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!REPORTING.includes(nodeData.name)) {
      return;
    }
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      onNodeCreated?.apply(this, arguments);
      const widget = ComfyWidgets.STRING(this, WIDGET, ["STRING", { multiline: true }], app).widget;
      widget.element.readOnly = true;
      widget.serialize = false;
      widget.options.serialize = false;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const widget = this.widgets?.find((candidate) => candidate.name === WIDGET);
      if (widget) {
        widget.value = (message?.text ?? []).join("\n");
      }
    };
  },
});
