"""The paper's run.sh command line (SOTA evaluation), shared by the args and CLI tests."""

PAPER_LINE = (
    "--fss_1000 --image_size 224 --pretrained --rsd 2 4 --l2 --foml --foml-tail 5 "
    "--final_layer_dropout_rate 0.5 --augment --aug_rate 0.5 --sgd --loss_name bce_dice "
    "--inner-batch 8 --learning-rate 0.0005 --train-shots 10 --inner-iters 59 "
    "--learning_rate_scheduler fixed --meta-iters 50000 --meta-batch 5 --eval-interval 500 "
    "--serially_eval_all_test_tasks --eval-samples 2 --shots 5 --eval-batch 8 --eval-iters 59 "
    "--transductive --model_name efficientlab --meta-step 0.1 --meta-step-final 0.00001"
).split()
