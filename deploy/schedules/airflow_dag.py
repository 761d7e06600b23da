"""Airflow: daily curation as one task (see docs/curate.md).

The run id is the logical date, so a retried night resumes the same step directories and publishes
under the same id; WORKDIR/selections/LATEST then names it. Copy into the DAGs folder of an Airflow
whose workers have gristmill installed (add Dataflow flags to bash_command to run the steps there).
"""

import datetime

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(dag_id="gristmill_curate_daily_c4", schedule="15 1 * * *", catchup=False,
         start_date=datetime.datetime(2025, 1, 1), max_active_runs=1) as dag:
    BashOperator(
        task_id="curate",
        bash_command="gristmill curate --config gs://my-bucket/curation/daily-c4.json --run_id {{ ds_nodash }}",
        retries=2, retry_delay=datetime.timedelta(minutes=10),
    )
