"""``streamtrain demo``: Gowalla replayed into a fresh topic, trained by the worker with XIR, then reported.

* :mod:`streamtrain.demo.settings`: the demo's configuration on top of the user's;
* :mod:`streamtrain.demo.recording`: the engine wrapper that records each step's loss and progressive metrics;
* :mod:`streamtrain.demo.runner`: the run itself (:func:`~streamtrain.demo.runner.run_demo`);
* :mod:`streamtrain.demo.report`: the progressive table, the text report, the chart.

Nothing is imported here, so importing one submodule does not pull in torch and Kafka.
"""
