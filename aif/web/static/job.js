// The job page's loss chart (uPlot), and a dpo or orpo job's reward chart (reward margin and
// accuracy), from the progress the page was rendered with, kept up to date from the job's
// event stream while the job runs.
(function () {
  const script = document.getElementById("job-script");
  const jobId = script.dataset.jobId;
  const data = JSON.parse(document.getElementById("progress-data").textContent);
  const losses = new Map();  // step -> loss; a step redone after a resume keeps its last value
  const rewards = new Map();  // step -> [reward margin, reward accuracy] (dpo, orpo)
  function keep(p) {
    if (p.loss !== null) losses.set(p.step, p.loss);
    if (p.reward_margin != null) rewards.set(p.step, [p.reward_margin, p.reward_accuracy]);
  }
  for (const p of data.points) keep(p);

  function series() {
    const steps = [...losses.keys()].sort((a, b) => a - b);
    const loss = steps.map((s) => losses.get(s));
    // The validation loss is measured once, after training: a point at the last step.
    const validation = steps.map((s, i) =>
      i === steps.length - 1 && data.validation_loss !== null ? data.validation_loss : null);
    return [steps, loss, validation];
  }

  // A chart drawn once there is data, then given each new series; `el` may be absent (the
  // reward chart is only on dpo and orpo jobs).
  const charts = [];
  function liveChart(el, height, empty, options, name) {
    let chart = null;
    if (el) {
      charts.push(() => chart && chart.setSize({ width: Math.min(el.clientWidth, 900), height }));
    }
    return (d) => {
      if (!el) return;
      if (d[0].length === 0) { el.textContent = empty; return; }
      if (chart) { chart.setData(d); return; }
      el.textContent = "";
      chart = new uPlot({ width: Math.min(el.clientWidth || 720, 900), height, ...options }, d, el);
      window[name] = chart;  // the browser tests read the drawn data back from it
    };
  }

  const drawLoss = liveChart(document.getElementById("loss-chart"), 280,
    "No training progress yet.", {
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: "loss" }],
      series: [
        { label: "step" },
        { label: "training loss", stroke: "#2456c8", width: 2 },
        { label: "validation loss", stroke: "#c8662a", width: 0,
          points: { show: true, size: 9, fill: "#c8662a" } },
      ],
    }, "aifLossChart");
  const drawRewardChart = liveChart(document.getElementById("reward-chart"), 220,
    "No reward figures yet.", {
      scales: { x: { time: false }, accuracy: { range: [0, 1] } },
      axes: [{ label: "step" }, { label: "reward margin" },
             { label: "reward accuracy", scale: "accuracy", side: 1 }],
      series: [
        { label: "step" },
        { label: "reward margin", stroke: "#2a8c4a", width: 2 },
        { label: "reward accuracy", stroke: "#8a3ab9", width: 2, scale: "accuracy" },
      ],
    }, "aifRewardChart");
  function draw() { drawLoss(series()); }
  function drawRewards() {
    const steps = [...rewards.keys()].sort((a, b) => a - b);
    drawRewardChart([steps, ...[0, 1].map((i) => steps.map((s) => rewards.get(s)[i]))]);
  }
  draw();
  drawRewards();
  window.addEventListener("resize", () => charts.forEach((resize) => resize()));

  if (script.dataset.terminal === "true" || !window.EventSource) return;
  const stream = new EventSource(`/jobs/${jobId}/events?after=${script.dataset.after}`);
  stream.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type.endsWith(".job.progress.v1") && event.data.stage === "training") {
      keep(event.data);
      draw();
      drawRewards();
      const margin = document.getElementById("fact-reward-margin");
      if (margin && event.data.reward_margin != null) {
        margin.textContent = event.data.reward_margin.toFixed(3);
        document.getElementById("fact-reward-accuracy").textContent =
          event.data.reward_accuracy.toFixed(3);
      }
      if (event.data.tokens_per_s !== null) {
        document.getElementById("fact-tps").textContent = event.data.tokens_per_s.toFixed(1);
      }
      document.getElementById("fact-steps").textContent =
        `${event.data.step} / ${event.data.total_steps}`;
    } else if (event.type.endsWith(".job.status.v1")) {
      const state = document.getElementById("job-state");
      state.textContent = state.dataset.state = event.data.state;
      // A new stage brings new sections (scores, gate, files): show them.
      stream.close();
      window.location.reload();
    }
  };
})();
